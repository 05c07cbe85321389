"""The DGBA reproduction sweeps (sweeps/dgba_nyuv2.yaml, sweeps/dgba_taskonomy.yaml): as
shipped they are refused only for their missing dataset root; a copy pointed at a generated
fixture (root, split sizes, and a small resize so the probe batch stays cheap) passes
`mtlsweep run --dry-run`; their layouts are the TreeMTL indices they name."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_real_data import _write_nyuv2, _write_taskonomy

from mtl.models import Layout
from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {"dgba_nyuv2": ROOT / "sweeps" / "dgba_nyuv2.yaml",
          "dgba_taskonomy": ROOT / "sweeps" / "dgba_taskonomy.yaml"}
N = 4


def fixture_copy(name: str, tmp_path: Path) -> Path:
    """The shipped sweep with dataset.root (and class_weights) on a generated fixture, split
    sizes and eval_samples cut to it, and a 33 px resize; everything else as shipped."""
    raw = yaml.safe_load(SWEEPS[name].read_text())
    data = tmp_path / "data"
    if name == "dgba_nyuv2":
        _write_nyuv2(data, "train", n=N)
        _write_nyuv2(data, "val", n=N)
    else:
        _write_taskonomy(data, {"b": [(p, 0) for p in range(3 * N)]})
        np.save(data / "semseg_prior_factor.npy", np.linspace(0.5, 2.0, 17))
        raw["dataset"]["class_weights"] = str(data / "semseg_prior_factor.npy")
    raw["dataset"].update(root=str(data), train=N, val=N, test=N, resize=[33, 33])
    raw["attacks"]["eval_samples"] = N
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_as_shipped_only_the_dataset_root_is_missing(name):
    with pytest.raises(SpecError, match=r"dataset\.(root|class_weights): .*(not an existing "
                                        r"directory|cannot read)"):
        load_spec(SWEEPS[name])


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_the_paper_settings_are_what_the_file_says(name, tmp_path):
    text = SWEEPS[name].read_text()
    spec = load_spec(fixture_copy(name, tmp_path))
    indices = [int(i) for i in re.findall(r"treemtl:(\d+)", text.split("layouts:")[1]
                                          .split("\n#")[0])]
    tasks = 3 if name == "dgba_nyuv2" else 5
    assert len(indices) == {3: 25, 5: 20}[tasks] == len(spec.layouts)
    assert list(spec.layouts) == [str(Layout.from_treemtl_index(i, tasks)) for i in indices]
    attacks = spec.attacks["specs"]
    assert sorted({a["eps"] for a in attacks}) == [*range(1, 11), 12, 14, 16]
    assert {a["method"] for a in attacks} == {"fgsm", "pgd", "apgd"}
    assert {a["steps"] for a in attacks if a["method"] == "pgd"} == {10}
    assert {a["objective"].split(":")[0] for a in attacks} == {"single", "total", "signsum",
                                                               "dgba"}
    assert spec.attacks["batch_size"] == 16
    assert spec.run.model["source"] == "deeplab_resnet34"


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_dry_run_passes_on_a_fixture_root(name, tmp_path, capsys):
    storage = tmp_path / "runs"
    assert main(["run", str(fixture_copy(name, tmp_path)), "--dry-run",
                 "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "nothing started, nothing written" in out and not storage.exists()
    assert f"data: {{'train': {N}, 'val': {N}, 'test': {N}}}" in out
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
