"""The sweep's own record: identity bound to the spec's hash, one run at a time, reruns and
resumes that run only what is missing, honest exit codes, and a sweep directory that is data
(nothing in it is unpickled or trusted before it is checked)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import record, trial_state
from orchestrator.cli import main
from orchestrator.results import read_results
from orchestrator.sweep_lock import sweep_lock

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["segment_semantic", "scene_class"]


def tiny(**overrides) -> dict:
    raw = {
        "dataset": {"name": "scenes", "size": 16, "train": 16, "val": 8, "test": 8},
        "tasks": TASKS,
        "model": {"width": 4},
        "training": {"epochs": 2, "keep_epochs": [2], "batch_size": 8, "lr": 0.05,
                     "seeds": [0, 1]},
        "attacks": {"methods": ["fgsm"], "objectives": ["total"], "eps": [8],
                    "eval_samples": 8, "batch_size": 8},
        "resources": {"cpu": 1},
        "max_failures": 0,
    }
    raw.update(overrides)
    return raw


def write(tmp_path: Path, raw: dict, name: str = "rec") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def local_ray():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def attempts(exp: Path) -> dict[str, int]:
    return {d.name: len(list(d.iterdir())) for d in (exp / "attempts").iterdir()}


def test_rerun_skips_finished_trials_and_a_changed_spec_is_refused(local_ray, tmp_path, capsys):
    sweep = write(tmp_path, tiny())
    storage = str(tmp_path / "runs")
    assert main(["run", sweep, "--storage", storage]) == 0
    exp = tmp_path / "runs" / "rec"
    first = attempts(exp)
    assert sorted(first.values()) == [1, 1]
    data = json.loads((exp / "sweep.json").read_text())
    assert data["spec_hash"] == record.spec_hash(tiny()) and data["format"] == 3
    assert not list(exp.rglob("*.pkl")) and not (exp / "tune").exists()
    rows = read_results(exp).collect()
    capsys.readouterr()

    # the same spec again: nothing runs, nothing is rewritten, exit 0
    assert main(["run", sweep, "--storage", storage]) == 0
    out = capsys.readouterr()
    assert "2 trials, 0 failed (2 finished, 2 were done before this run)" in out.out
    assert attempts(exp) == first
    assert read_results(exp).collect().equals(rows)

    # a different spec under the same name: refused before any work, naming the field
    changed = write(tmp_path, tiny(attacks={**tiny()["attacks"], "eps": [4]}))
    assert main(["run", changed, "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "is taken" in err and "attacks.eps: [8] -> [4]" in err and "--new-name" in err
    assert attempts(exp) == first and record.load_spec_record(str(exp))["spec_hash"] == \
        data["spec_hash"]

    # --new-name runs it beside the old one; --overwrite replaces the old one
    assert main(["run", changed, "--storage", storage, "--new-name"]) == 0
    assert (tmp_path / "runs" / "rec-2" / "sweep.json").is_file()
    assert read_results(exp).collect()["eps"].unique().to_list() in ([0.0, 8.0], [8.0, 0.0])
    assert main(["run", changed, "--storage", storage, "--overwrite"]) == 0
    assert set(read_results(exp).collect()["eps"].unique()) == {0.0, 4.0}


def test_a_second_run_of_a_locked_sweep_is_refused(tmp_path, capsys):
    sweep = write(tmp_path, tiny())
    with sweep_lock(str(tmp_path / "runs" / "rec")):
        assert main(["run", sweep, "--storage", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "is in use by another mtlsweep run" in err and f'"pid": {os.getpid()}' in err


def test_diverging_training_fails_the_trial_by_name_and_publishes_no_rows(local_ray, tmp_path,
                                                                          capsys):
    raw = tiny(training={**tiny()["training"], "lr": 1e30, "seeds": [0]})
    assert main(["run", write(tmp_path, raw), "--storage", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 trials, 1 failed" in out and "training diverged at epoch 1" in out
    assert "mtlsweep resume" in out
    assert read_results(tmp_path / "rec").collect().height == 0


class Payload:
    """Unpickling this writes a marker file: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_resume_reads_only_the_checked_record_and_never_unpickles(local_ray, tmp_path, capsys):
    sweep = write(tmp_path, tiny(training={**tiny()["training"], "seeds": [0]}))
    assert main(["run", sweep, "--storage", str(tmp_path)]) == 0
    exp = tmp_path / "rec"
    marker = tmp_path / "pwned"
    for name in ("tuner.pkl", "trainable.pkl", "error.pkl", "experiment_state.pkl"):
        (exp / name).write_bytes(pickle.dumps(Payload(str(marker))))
    for status in (exp / "trials").glob("*/status.json"):
        status.unlink()  # make the trial look unfinished, so resume has work to do
    capsys.readouterr()
    assert main(["resume", str(exp)]) == 0
    assert not marker.exists()
    assert "1 trials, 0 failed (1 finished)" in capsys.readouterr().out

    # a record whose name escapes its directory, or that was edited, is refused
    data = json.loads((exp / "sweep.json").read_text())
    (exp / "sweep.json").write_text(json.dumps({**data, "name": "../../x"}))
    assert main(["resume", str(exp)]) == 2
    assert "is not the directory's name 'rec'" in capsys.readouterr().err
    edited = {**data, "sweep": {**data["sweep"], "max_failures": 3}}
    (exp / "sweep.json").write_text(json.dumps(edited))
    assert main(["resume", str(exp)]) == 2
    assert "spec_hash does not match" in capsys.readouterr().err


def test_saved_trial_state_round_trips_and_a_damaged_one_is_ignored(tmp_path, capsys):
    exp = str(tmp_path / "exp")
    src = tmp_path / "src"
    src.mkdir()
    (src / "train_state.pt").write_bytes(b"state-1")
    (src / "epoch_001.pt").write_bytes(b"weights" * 100)
    trial_state.save_state(exp, "t1", src)
    (src / "train_state.pt").write_bytes(b"state-2")
    trial_state.save_state(exp, "t1", src)
    objects = sorted(p.name for p in Path(trial_state.state_dir(exp, "t1")).iterdir())
    assert len(objects) == 3  # two files + the manifest: the first training state is gone
    out = tmp_path / "out"
    out.mkdir()
    assert trial_state.load_state(exp, "t1", out)
    assert (out / "train_state.pt").read_bytes() == b"state-2"
    assert (out / "epoch_001.pt").read_bytes() == b"weights" * 100

    victim = next(p for p in Path(trial_state.state_dir(exp, "t1")).iterdir()
                  if p.name.endswith("epoch_001.pt"))
    victim.write_bytes(b"weights" * 50)  # truncated
    again = tmp_path / "again"
    again.mkdir()
    assert not trial_state.load_state(exp, "t1", again)
    assert list(again.iterdir()) == []
    assert "does not match its recorded size and sha256" in capsys.readouterr().err
    assert not trial_state.load_state(exp, "nobody", again)


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AIR_NEW_OUTPUT": "0"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def test_ctrl_c_stops_with_130_and_resume_finishes_the_sweep(tmp_path):
    raw = tiny(training={**tiny()["training"], "epochs": 6, "keep_epochs": [6],
                         "seeds": [0, 1, 2]}, max_concurrent=1)
    sweep = write(tmp_path, raw)
    exp = tmp_path / "rec"
    proc = _cli("run", sweep, "--storage", str(tmp_path))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and \
                not list(exp.glob("trials/*/state/manifest.json")):
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.killpg(proc.pid, 2)  # SIGINT to the whole group, as Ctrl-C in a terminal sends
        time.sleep(0.3)
        proc.send_signal(2)  # a second Ctrl-C during the shutdown: still no traceback
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert f"To continue: mtlsweep resume {exp}" in out and "Traceback" not in out
    assert "Tuner.restore" not in out
    deadline = time.time() + 30  # no Ray process the driver started outlives it
    while _session_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert _session_pids(proc.pid) == []

    resumed = _cli("resume", str(exp))
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "3 trials, 0 failed (3 finished" in out
    rows = read_results(exp).collect()
    assert rows["trial_id"].n_unique() == 3 and rows.is_duplicated().sum() == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_fails_cleanly_and_resume_recovers_every_row(local_ray, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "300k"):
        pytest.skip("needs root and tmpfs to make a small full disk")
    try:
        raw = tiny(training={**tiny()["training"], "seeds": [0, 1, 2]})
        sweep = write(tmp_path, raw)
        code = main(["run", sweep, "--storage", str(disk)])
        out = capsys.readouterr()
        if code == 0:  # everything fitted: fill the disk and rerun from scratch
            pytest.fail("the 300k disk did not fill up; make the test's disk smaller")
        assert code == 1
        text = out.out + out.err
        assert "no space left on" in text and "Traceback" not in out.err
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert main(["resume", str(disk / "rec")]) == 0, capsys.readouterr()
        rows = read_results(disk / "rec").collect()
        assert rows["trial_id"].n_unique() == 3 and rows.is_duplicated().sum() == 0
        timings = read_results(disk / "rec", "timings").collect()
        assert timings.select("trial_id").unique().height == 3
        per_trial = rows.group_by("trial_id").len()["len"]
        assert per_trial.n_unique() == 1  # every trial has all of its rows
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_whole_section_axis_gets_its_own_column_beside_the_core_one(tmp_path):
    """`axes: {model: [...]}` sweeps whole model sections; its column may not shadow the
    core `model` column (the model's source), so it is `model.json`."""
    from orchestrator.spec import parse_spec
    from orchestrator.trial import execute_trial, trial_configs
    raw = tiny(axes={"model": [{"width": 4}, {"width": 6}]},
               training={**tiny()["training"], "epochs": 1, "keep_epochs": [1], "seeds": [0]})
    spec = parse_spec(raw, name="sections", storage=str(tmp_path))
    assert [a.column for a in spec.axes if a.path == "model"] == ["model.json"]
    for trial in trial_configs(spec):
        execute_trial(trial, storage=str(tmp_path), store_dir="")
    rows = read_results(tmp_path / "sections").collect()
    assert set(rows["model"]) == {"resnet"}
    assert set(rows["model.json"]) == {'{"width": 4}', '{"width": 6}'}


DEMO_TRIAL_IDS = [
    "bp1-none-rho0-adam-s0-e4-46821136", "bp1-none-rho0.05-adam-s0-e4-9d6d3988",
    "bp1-none-rho0.5-adam-s0-e4-fad87033", "bp1-dgba-rho0-adam-s0-e4-ac4ee99f",
    "bp1-dgba-rho0.05-adam-s0-e4-909bbecc", "bp1-dgba-rho0.5-adam-s0-e4-6bb697ab",
    "bp4-none-rho0-adam-s0-e4-1f40c94c", "bp4-none-rho0.05-adam-s0-e4-5730d5e1",
    "bp4-none-rho0.5-adam-s0-e4-62caab31", "bp4-dgba-rho0-adam-s0-e4-7a1ea029",
    "bp4-dgba-rho0.05-adam-s0-e4-fa38bf43", "bp4-dgba-rho0.5-adam-s0-e4-aa4283ab"]


def test_an_unchanged_yaml_keeps_its_trial_ids_across_versions() -> None:
    """Trial ids key the record: if a new field (e.g. training.betas, compute) changed them,
    rerunning an unchanged sweep after an upgrade would redo every finished trial. New fields
    stay out of the hashed config while they hold their default."""
    from orchestrator.spec import load_spec
    from orchestrator.trial import trial_configs
    root = Path(__file__).resolve().parents[1]
    ids = [t["trial_id"] for t in trial_configs(load_spec(root / "sweeps" / "demo.yaml"))]
    assert ids == DEMO_TRIAL_IDS
