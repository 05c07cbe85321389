"""`mtlsweep run SWEEP --dry-run`: every shipped sweep (and the example user project) checks
out with exit 0 and writes nothing; each kind of mistake that only shows when the plugins run
(a wrong import path, a missing dataset root, a task the dataset lacks, a model output missing
a task) exits 2 with one line naming the field — all before Ray starts."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
# sweeps that need a real dataset root are checked on fixtures in tests/test_dgba_sweeps.py
NEEDS_DATA = {"dgba_nyuv2", "dgba_taskonomy"}
SHIPPED = sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p.stem not in NEEDS_DATA) + \
    [ROOT / "examples" / "byo" / "sweep.yaml"]

USER_NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class OneHead(nn.Module):
        """Predicts depth only, whatever it is asked for."""
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1)
        def forward(self, x):
            return {"depth_zbuffer": self.conv(x)}

    def one_head(tasks, task_channels):
        return OneHead()
''')


@pytest.fixture(autouse=True)
def _forget_user_packages():
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n.split(".")[0] in ("byo", "dryrun_pkg")]:
        del sys.modules[name]


def sweep_file(tmp_path: Path, **changes) -> Path:
    raw = {"dataset": {"name": "scenes", "size": 16, "train": 8, "val": 4, "test": 4},
           "tasks": ["segment_semantic", "depth_zbuffer"],
           "training": {"epochs": 1, "batch_size": 4},
           "attacks": {"methods": ["fgsm"], "objectives": ["total"], "eps": [8],
                       "eval_samples": 4}}
    raw.update(changes)
    package = tmp_path / "dryrun_pkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_NETS)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_sweeps_pass_a_dry_run_and_write_nothing(path, tmp_path, capsys):
    storage = tmp_path / "runs"
    assert main(["run", str(path), "--dry-run", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "trials:" in out and "nothing started, nothing written" in out
    assert "axis " in out  # the grid's axes are listed
    assert not storage.exists()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


@pytest.mark.parametrize("changes,field", [
    ({"model": {"factory": "dryrun_pkg.nets:no_such_factory"}}, "model.factory"),
    ({"model": {"factory": "dryrun_pkg.no_such_module:build"}}, "model.factory"),
    ({"dataset": {"name": "nyuv2", "root": "/no/such/dir"}}, "dataset.root"),
    ({"tasks": ["segment_semantic", "normal"],
      "dataset": {"factory": "byo.data:make_split", "size": 16}}, "tasks[1]"),
    ({"model": {"factory": "dryrun_pkg.nets:one_head"}}, "model.factory"),
], ids=["attribute", "module", "root", "task-not-in-data", "output-missing-task"])
def test_plugin_mistakes_exit_2_with_one_line_naming_the_field(changes, field, tmp_path,
                                                               capsys):
    path = sweep_file(tmp_path, **changes)
    if "byo" in str(changes):
        sys.path.insert(0, str(ROOT / "examples" / "byo"))
    assert main(["run", str(path), "--dry-run", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mtlsweep run: error: {field}"), err
    assert not (tmp_path / "runs").exists()
