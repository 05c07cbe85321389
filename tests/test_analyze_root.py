"""`mtlsweep analyze STORAGE_ROOT`: one report per sweep, never pooled; `--sweep` picks one;
and the analyze command imports no torch (issue 13 item 4, issue 12 item 4)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.commands.analyze import sweeps_under, targets
from orchestrator.results import write_trial_table
from orchestrator.results_reading import ResultsWarning

DGBA = {"alpha": -0.25, "beta": -0.75}  # each sweep's white-box Δ of dgba at ε=8


def write_sweep(root: Path, sweep: str, dgba: float) -> None:
    """Two trials, white-box only: dgba Δ = ``dgba`` at ε 8 (half at ε 4), total half of it."""
    for seed in (0, 1):
        rows = [dict(attempt=0, layout="0+1|0,1", branch_point=1, adv_train="none", rho=0.0,
                     optimizer="adam", seed=seed, epoch=2, kind="whitebox", attack_method="fgsm",
                     objective=objective, eps=eps, steps=1, task="mean", metric="delta",
                     rel_change=dgba * eps / 8 * (1.0 if objective == "dgba" else 0.5))
                for objective in ("dgba", "total") for eps in (4.0, 8.0)]
        write_trial_table(root, sweep, "measurements", f"t{seed}", rows)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for sweep, dgba in DGBA.items():
        write_sweep(tmp_path / "runs", sweep, dgba)
    (tmp_path / "runs" / "models").mkdir()  # the model store: not a sweep
    return tmp_path / "runs"


def test_storage_root_gets_one_report_per_sweep(root: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert sweeps_under(str(root)) == ["alpha", "beta"]
    assert main(["analyze", str(root)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("== sweep alpha ==") < printed.index("-0.25") < printed.index(
        "== sweep beta ==") < printed.index("-0.75")
    assert "2 of 2 sweeps analysed" in printed
    assert printed.count("claims judged (95% intervals") == 2  # the verdicts, per sweep
    assert printed.index("== sweep alpha ==") < printed.index(
        "  (a) DGBA is the strongest attack: ") < printed.index("== sweep beta ==")
    for sweep, dgba in DGBA.items():
        report = root / sweep / "analysis" / "report.md"
        assert f"  {sweep}: {report}  (2 plots)" in printed
        text = report.read_text()
        assert text.startswith(f"# mtlsweep analysis — {sweep}\n")  # this sweep alone
        assert "2 trials" in text
        other = next(v for k, v in DGBA.items() if k != sweep)
        assert f"{dgba:.4f}" in text and f"{other:.4f}" not in text


def test_a_large_full_read_is_announced_and_the_next_analysis_reads_the_copy(
        root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.commands.analyze as command
    monkeypatch.setattr(command, "ANNOUNCE_FROM", 3)  # alpha: 2 files, beta: 3
    (root / "beta" / "results" / "measurements" / "extra.parquet").write_bytes(b"junk")
    assert main(["analyze", str(root)]) == 0
    err = capsys.readouterr().err
    assert "reading all 3 result files of beta (no consolidated copy" in err
    assert "of alpha" not in err  # below the threshold: small reads stay quiet
    assert main(["analyze", str(root)]) == 0
    assert "reading all" not in capsys.readouterr().err


def test_out_dir_holds_a_folder_per_sweep(root: Path, tmp_path: Path) -> None:
    assert main(["analyze", str(root), "--out", str(tmp_path / "reports")]) == 0
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["alpha", "beta"]
    assert (tmp_path / "reports" / "beta" / "report.md").is_file()
    assert not (root / "alpha" / "analysis").exists()


def test_sweep_option_picks_one(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", str(root), "--sweep", "beta"]) == 0
    printed = capsys.readouterr().out
    assert "-0.75" in printed and "-0.25" not in printed and "1 of 1 sweeps" in printed
    assert (root / "beta" / "analysis" / "report.md").is_file()
    assert not (root / "alpha" / "analysis").exists()


def test_unknown_sweep_is_one_clear_error(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", str(root), "--sweep", "gamma"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mtlsweep analyze: error: no sweep 'gamma' under {root}; its sweeps: "
                   "alpha, beta"]


def test_a_sweep_without_results_yet_does_not_stop_the_others(
        root: Path, capsys: pytest.CaptureFixture) -> None:
    (root / "started" / "results" / "measurements").mkdir(parents=True)
    assert main(["analyze", str(root)]) == 1
    captured = capsys.readouterr()
    assert "2 of 3 sweeps analysed" in captured.out
    assert "  started: not analysed (no measurements" in captured.out
    assert "mtlsweep analyze: error: sweep started: no measurements" in captured.err
    assert (root / "beta" / "analysis" / "report.md").is_file()


def test_sweep_directory_is_analysed_as_before(root: Path) -> None:
    todo, single = targets(str(root / "alpha"), None, None)
    assert single and [(t.name, t.out) for t in todo] == [("alpha", root / "alpha" / "analysis")]
    with pytest.raises(ValueError, match="URI: say where the reports go with --out"):
        targets(f"file://{root}", None, None)


CHILD = """
import json, sys
{setup}
code = main(["analyze", sys.argv[1], "--out", sys.argv[2]])
print(json.dumps({{"code": code, "torch": "torch" in sys.modules,
                   "heavy": sorted(m for m in ("torch", "ray", "mtl.train") if m in sys.modules)}}))
"""


def run_child(setup: str, root: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(setup=setup), str(root), str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_analyze_command_imports_no_torch(root: Path, tmp_path: Path) -> None:
    """The analyze command (its module and everything it imports when it runs) needs no torch."""
    setup = ("import argparse\nfrom orchestrator.commands import analyze as command\n"
             "parser = argparse.ArgumentParser()\ncommand.add_parser(parser.add_subparsers())\n"
             "def main(argv): args = parser.parse_args(argv); return args.func(args)")
    result = run_child(setup, root / "alpha", tmp_path / "out")
    assert result == {"code": 0, "torch": False, "heavy": []}
    assert (tmp_path / "out" / "report.md").is_file()


def test_mtlsweep_analyze_imports_no_torch(root: Path, tmp_path: Path) -> None:
    """Through the CLI too: only the named command's module is imported (cli.COMMANDS)."""
    result = run_child("from orchestrator.cli import main", root / "alpha", tmp_path / "out")
    assert result == {"code": 0, "torch": False, "heavy": []}


@pytest.mark.timeout(30)
def test_other_warnings_pass_through_once_and_results_warnings_print_once(capsys) -> None:
    """A matplotlib-style warning inside the analysis is re-issued once, after recording stops
    (re-issued while recording, it was recorded again: an endless loop that ate all memory)."""
    import warnings

    from orchestrator.commands.analyze import clean_warnings
    with pytest.warns(UserWarning, match="axes sizes collapsed") as seen:
        with clean_warnings("mtlsweep analyze"):
            warnings.warn("axes sizes collapsed to zero", UserWarning)
            for _ in range(2):
                warnings.warn(ResultsWarning("/x/t0.parquet: not a parquet file"))
    assert len([w for w in seen if not issubclass(w.category, ResultsWarning)]) == 1
    err = capsys.readouterr().err
    assert err == "mtlsweep analyze: warning: /x/t0.parquet: not a parquet file\n"
