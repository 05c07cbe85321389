"""Fault tolerance of the driver: SIGKILL `mtlsweep run` mid-sweep, `mtlsweep resume` it, and
the final rows equal those of an uninterrupted run of the same spec (attempt numbers aside),
with no duplicates."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from orchestrator.results import read_results

ROOT = Path(__file__).resolve().parents[1]
NAME = "resumable"
TRIALS = 4
SPEC = {
    "dataset": {"name": "scenes", "size": 16, "train": 512, "val": 8, "test": 16},
    "tasks": ["segment_semantic", "depth_zbuffer", "scene_class"],
    "model": {"width": 4},
    "layouts": [2],
    "training": {"epochs": 4, "keep_epochs": [2, 4], "batch_size": 16, "lr": 0.05,
                 "milestones": [3], "rho": [0, 0.5], "seeds": [0, 1]},
    "attacks": {"methods": ["fgsm", "pgd"], "objectives": ["total", "dgba"], "eps": [8],
                "steps": 1, "eval_samples": 16},
    "cross_task": True,
    "transfer": {"targets": [{"layout": 5, "seed": 9, "epochs": 1}]},
    "resources": {"cpu": 1},
    "max_concurrent": 2,
    "max_failures": 1,
}


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AIR_NEW_OUTPUT": "0"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT,
                            env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _session_pids(sid: int) -> list[int]:
    """Processes still alive in the session the killed driver led (Ray processes it spawned)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _trial_workers(sid: int) -> list[int]:
    """Ray worker processes of the session that are running a trial (Tune's function actor)."""
    found = []
    for pid in _session_pids(sid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "ImplicitFunc" in title or "tune_trainable" in title:
            found.append(pid)
    return found


def _kill_session(sid: int) -> None:
    for _ in range(20):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _frame(storage: Path, table: str) -> pl.DataFrame:
    frame = read_results(storage / NAME, table).collect().drop("attempt")
    return frame.sort(frame.columns, nulls_last=True)


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
    sweep = tmp_path / f"{NAME}.yaml"
    sweep.write_text(yaml.safe_dump(SPEC))
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    results = killed / NAME / "results" / "measurements"

    proc = _cli("run", str(sweep), "--storage", str(killed))
    try:
        deadline, first = time.time() + 400, []
        while time.time() < deadline and proc.poll() is None:
            first = sorted(p.stem for p in results.glob("*.parquet")) if results.is_dir() else []
            if first:
                break
            time.sleep(0.2)
        # The first trial's status is written right after its rows; give it a moment, so the
        # resume must skip it, then kill mid-sweep.
        time.sleep(3)
        assert proc.poll() is None, "the sweep ended before it could be killed:\n" + \
            (proc.stdout.read() if proc.stdout else "")[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_session(proc.pid)
    done_at_kill = len(list(results.glob("*.parquet")))
    assert 1 <= done_at_kill < TRIALS

    out = _finish(_cli("resume", str(killed / NAME)))
    # (was "resuming", Tune's restore message: the record now says what it skips)
    assert "trials already done; running" in out and f"{TRIALS} trials, 0 failed" in out
    _finish(_cli("run", str(sweep), "--storage", str(fresh)))

    for table in ("measurements", "epochs"):
        got, want = _frame(killed, table), _frame(fresh, table)
        assert got.height == want.height > 0, table
        assert got.is_duplicated().sum() == 0, table
        assert got.equals(want), table
    assert read_results(killed / NAME).collect()["trial_id"].n_unique() == TRIALS
    attempts = read_results(killed / NAME, "timings").collect().select("trial_id", "attempt")
    assert attempts["trial_id"].n_unique() == TRIALS
    # the trial that had finished well before the kill was not rerun; the others were
    # resumed (or started) by the resume
    attempts_dir = killed / NAME / "attempts"
    assert [len(list((attempts_dir / trial).iterdir())) for trial in first] == [1] * len(first)
    assert set(attempts["attempt"]) <= {1, 2}

    # A trial's worker dies mid-training: Tune retries the trial (max_failures), which continues
    # from its last epoch saved in the record; the rows are again those of the uninterrupted
    # run.
    crashed = tmp_path / "crashed"
    proc = _cli("run", str(sweep), "--storage", str(crashed))
    try:
        deadline, victims = time.time() + 400, []
        while time.time() < deadline and proc.poll() is None and not victims:
            if list((crashed / NAME).glob("trials/*/state/manifest.json")):
                victims = _trial_workers(proc.pid)
            time.sleep(0.2)
        assert victims, "no running trial worker found to kill"
        os.kill(victims[0], signal.SIGKILL)
        out = _finish(proc)
    finally:
        _kill_session(proc.pid)
    assert f"{TRIALS} trials, 0 failed" in out
    for table in ("measurements", "epochs"):
        assert _frame(crashed, table).equals(_frame(fresh, table)), table
    retried = read_results(crashed / NAME, "timings").collect().filter(pl.col("attempt") == 2)
    assert retried["trial_id"].n_unique() >= 1
