"""Clean outputs passed in (issue 12, trial cost): an attack given the model's outputs on the
clean batch crafts exactly the images it crafts with its own clean forward, runs no clean
forward of its own, rejects outputs that do not fit the batch, and `evaluate_checkpoint` hands
its one clean forward per batch to every spec (not across a compute setting that changes the
crafting forward)."""
from __future__ import annotations

import pytest
import torch

import mtl.evaluate as evaluate
from mtl.attacks import AttackSpec, attack
from mtl.config.compute import Compute
from mtl.evaluate import evaluate_checkpoint
from mtl.models.outputs import task_outputs
from test_evaluate import TASKS, make_loader, make_model

CASES = [("pgd", "dgba", {}), ("pgd", "dgba", {"denominator": "clean"}),
         ("pgd", "signsum", {}), ("apgd", "signsum", {}), ("pgd", "minmax", {"solver": "fast"}),
         ("pgd", "minmax", {"solver": "fast", "denominator": "clean"}),
         ("apgd", "minmax", {"solver": "fast"}), ("mifgsm", "dgba", {}), ("apgd", "dgba", {}),
         ("pgd", "total", {"reduction": "pixel"})]


def clean_forward(model, batch, tasks=TASKS):
    """The evaluation's clean forward: every scored task at once, no grad, eval mode."""
    with torch.no_grad():
        return dict(task_outputs(model.eval(), batch["image"], tasks))


class CountingForward(torch.nn.Module):
    """Counts the model's forwards (the clean one runs without grad)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.tasks, self.no_grad_calls = model, model.tasks, 0
        self.out_channels = model.out_channels

    def forward(self, x, tasks=None):
        self.no_grad_calls += not torch.is_grad_enabled()
        return self.model(x, tasks=tasks)


@pytest.mark.parametrize("method,objective,options", CASES)
def test_given_clean_outputs_craft_the_same_images(method, objective, options):
    model, batch = make_model(0).eval(), make_loader(n_batches=1)[0]
    kwargs = dict(method=method, objective=objective, eps=8, steps=3, **options)
    want = attack(model, batch, **kwargs)
    got = attack(model, batch, clean_outputs=clean_forward(model, batch), **kwargs)
    assert torch.equal(got, want)
    # a subset of the tasks attacked, outputs of every task given: still the same images
    sub = dict(kwargs, tasks=["depth_zbuffer", "normal"])
    assert torch.equal(attack(model, batch, clean_outputs=clean_forward(model, batch), **sub),
                       attack(model, batch, **sub))


def test_given_clean_outputs_the_attack_runs_no_clean_forward():
    model, batch = make_model(0).eval(), make_loader(n_batches=1)[0]
    counted = CountingForward(model)
    attack(counted, batch, method="pgd", objective="dgba", eps=8, steps=2)
    assert counted.no_grad_calls == 1  # its own clean forward
    counted.no_grad_calls = 0
    attack(counted, batch, method="pgd", objective="dgba", eps=8, steps=2,
           clean_outputs=clean_forward(model, batch))
    assert counted.no_grad_calls == 0


def test_other_clean_outputs_change_the_attack():
    """The outputs are really used: another batch's outputs give other clean losses."""
    model, loader = make_model(0).eval(), make_loader(n_batches=2)
    kwargs = dict(method="pgd", objective="dgba", eps=8, steps=3, denominator="clean")
    assert not torch.equal(
        attack(model, loader[0], clean_outputs=clean_forward(model, loader[1]), **kwargs),
        attack(model, loader[0], **kwargs))


@pytest.mark.parametrize("bad,words", [
    (lambda outs: {k: v for k, v in outs.items() if k != "normal"}, "no output for attacked"),
    (lambda outs: {k: v[:2] for k, v in outs.items()}, "one row per image"),
    (lambda outs: {k: 1.0 for k in outs}, "one row per image"),
    (lambda outs: [1, 2], "must be a mapping"),
])
def test_bad_clean_outputs_raise_one_clear_error(bad, words):
    model, batch = make_model(0).eval(), make_loader(n_batches=1)[0]
    with pytest.raises(ValueError, match=f"clean_outputs: .*{words}"):
        attack(model, batch, method="pgd", objective="signsum", eps=8, steps=1,
               clean_outputs=bad(clean_forward(model, batch)))


def spy(seen, craft=None):
    """A craft that records the clean outputs it is given, then crafts with `craft`."""
    real = craft or evaluate._craft

    def run(model, batch, spec, clean_outputs=None):
        seen.append(clean_outputs)
        return real(model, batch, spec, clean_outputs=clean_outputs)
    return run


def test_evaluate_checkpoint_shares_its_clean_forward_with_every_spec():
    model, loader = make_model(0).eval(), make_loader(n_batches=2)
    specs = [AttackSpec("pgd", "dgba", 8, 2), AttackSpec("fgsm", "signsum", 8, 1)]
    cross = [AttackSpec("fgsm", "single:normal", 8, 1)]
    seen: list = []
    evaluate_checkpoint(model, loader, specs, cross=cross, craft=spy(seen))
    assert len(seen) == len(loader) * (len(specs) + len(cross))
    for i, batch in enumerate(loader):
        want = clean_forward(model, batch)
        for outs in seen[3 * i:3 * i + 3]:
            assert set(outs) == set(TASKS)
            assert all(torch.equal(outs[t], want[t]) for t in TASKS)
    seen.clear()  # transfer only: no clean forward of the model, nothing to share
    evaluate_checkpoint(model, loader, specs, {"t": make_model(1)}, whitebox=False,
                        craft=spy(seen))
    assert seen == [None] * (len(loader) * len(specs))


@pytest.mark.parametrize("compute,shared", [(Compute(), True), (Compute(autocast="bf16"), False),
                                            (Compute(channels_last=True), False)])
def test_crafter_passes_clean_outputs_on_only_where_the_forward_is_unchanged(compute, shared):
    model, batch = make_model(0).eval(), make_loader(n_batches=1)[0]
    seen: list = []
    spec = AttackSpec("fgsm", "dgba", 8, 1)
    outs = clean_forward(model, batch)
    compute.crafter(spy(seen))(model, batch, spec, clean_outputs=outs)
    assert (seen[0] is outs) if shared else (seen[0] is None)
