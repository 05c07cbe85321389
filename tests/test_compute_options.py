"""The run config's `compute` section (issue 12, item 6): parsing, and correctness on CPU of
bf16 autocast (close to float32), channels-last (equal within float rounding) and torch.compile
for the attacks (equal within float rounding), in evaluation and training."""
from __future__ import annotations

import copy
import math
import time

import pytest
import torch

import mtl.evaluate as evaluate
from mtl.attacks import AttackSpec
from mtl.config import ConfigError
from mtl.config.compute import Compute, parse_compute
from mtl.config.run import parse_run_config
from mtl.evaluate import evaluate_checkpoint
from mtl.train import TrainConfig, train
from test_evaluate import make_loader, make_model

SPECS = [AttackSpec("pgd", "dgba", 8, 2), AttackSpec("fgsm", "total", 4, 1)]
RUN = {"dataset": {"name": "scenes", "size": 8, "train": 8, "val": 4, "test": 4},
       "tasks": ["segment_semantic", "scene_class"], "training": {"epochs": 1},
       "attacks": {"methods": ["fgsm"], "objectives": ["total"], "eps": [4]}}


def test_section_defaults_values_and_one_line_errors():
    assert parse_compute(None) == {"autocast": "none", "channels_last": False, "compile": False}
    assert parse_compute({"autocast": "bf16", "compile": True}) == {
        "autocast": "bf16", "channels_last": False, "compile": True}
    for raw, where in (({"autocast": "fp8"}, "compute.autocast: unknown autocast"),
                       ({"channels_last": "yes"}, "compute.channels_last: expected true"),
                       ({"compile": 1}, "compute.compile: expected true"),
                       ({"precision": "bf16"}, "compute.precision"),
                       ("bf16", "compute")):
        with pytest.raises(ConfigError, match=where) as err:
            parse_compute(raw)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="compute.autocast"):
        parse_run_config({**RUN, "compute": {"autocast": "fp16"}})


def test_default_section_keeps_the_config_and_model_key():
    plain = parse_run_config(RUN)
    same = parse_run_config({**RUN, "compute": {"autocast": "none", "compile": False}})
    assert plain.to_dict() == same.to_dict() and "compute" not in plain.to_dict()
    assert plain.model_key() == same.model_key()
    bf16 = parse_run_config({**RUN, "compute": {"autocast": "bf16"}})
    assert bf16.to_dict()["compute"]["autocast"] == "bf16"
    assert bf16.model_key() != plain.model_key()  # bf16 training gives other weights
    compiled = parse_run_config({**RUN, "compute": {"compile": True}})
    assert compiled.model_key() == plain.model_key()  # attacks only: the same weights


def rows_of(model, compute: Compute | None, specs=SPECS):
    craft = compute.crafter(evaluate._craft) if compute is not None else None
    if compute is not None:
        compute.prepare_model(model)
    result = evaluate_checkpoint(model.eval(), make_loader(n_batches=1), specs, craft=craft)
    return {(r["attack_method"], r["objective"], r["task"], r["metric"]):
            (r["clean"], r["adv"], r["rel_change"]) for r in result.whitebox}


def close(a, b, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(b))


def test_bf16_autocast_attacks_are_finite_and_close_to_float32():
    want = rows_of(make_model(0), None)
    got = rows_of(make_model(0), Compute(autocast="bf16"))
    assert set(got) == set(want)
    adv = [(got[k][1], want[k][1]) for k in want if want[k][1] is not None]
    assert all(math.isfinite(g) for g, _ in adv)
    assert all(close(g, w, 0.1) for g, w in adv)
    assert any(g != w for g, w in adv)  # autocast really ran in bf16


def test_channels_last_attacks_give_the_same_rows():
    want = rows_of(make_model(0), None)
    got = rows_of(make_model(0), Compute(channels_last=True))
    assert set(got) == set(want)
    assert all(close(g, w, 1e-5) for k in want for g, w in zip(got[k], want[k]))


@pytest.mark.slow  # compiling the forward and backward graphs takes minutes on a loaded CPU
def test_compiled_attacks_give_the_same_rows(capsys):
    want = rows_of(make_model(0), None, SPECS[1:])
    t0 = time.perf_counter()
    got = rows_of(make_model(0), Compute(compile=True), SPECS[1:])
    if "torch.compile failed" in capsys.readouterr().err:
        pytest.skip("torch.compile cannot run here (the fallback crafted eagerly)")
    assert set(got) == set(want)
    assert all(close(g, w, 1e-4) for k in want for g, w in zip(got[k], want[k]))
    print(f"compile path: {time.perf_counter() - t0:.1f} s")


def test_compile_failure_falls_back_with_one_warning(monkeypatch, capsys):
    import mtl.config.compute as compute_module

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(compute_module, "_compiled", Broken)
    want = rows_of(make_model(0), None)
    got = rows_of(make_model(0), Compute(compile=True))
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and len(err.strip().splitlines()) == 1
    assert got == want


def train_history(compute: Compute | None):
    torch.manual_seed(0)
    model = make_model(3)
    data = TinySet()
    config = TrainConfig(epochs=1, batch_size=4, lr=0.01)
    return train(model, data, config, progress=False, compute=compute).history[0], model


class TinySet(torch.utils.data.Dataset):
    """Eight samples of the evaluation tests' random batches."""

    def __init__(self) -> None:
        batches = make_loader(n_batches=2)
        self.items = [{k: v[i] for k, v in b.items()} for b in batches for i in range(4)]
        self.task_channels = {"segment_semantic": 5, "scene_class": 4}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def test_training_with_channels_last_and_bf16():
    base, _ = train_history(None)
    last, model = train_history(Compute(channels_last=True))
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert close(last["train_loss"], base["train_loss"], 1e-5)
    bf16, _ = train_history(Compute(autocast="bf16"))
    assert math.isfinite(bf16["train_loss"]) and bf16["train_loss"] != base["train_loss"]
    assert close(bf16["train_loss"], base["train_loss"], 0.1)


def test_compute_crafter_leaves_the_callers_batch_alone():
    """The crafter works on a copy of the batch (the caller's image stays contiguous)."""
    model = make_model(0).eval()
    batch = make_loader(n_batches=1)[0]
    image = batch["image"].clone()
    craft = Compute(channels_last=True).crafter(evaluate._craft)
    adv = craft(copy.deepcopy(model), batch, SPECS[1])
    assert torch.equal(batch["image"], image) and batch["image"].is_contiguous()
    assert adv.shape == image.shape and adv.is_contiguous()
