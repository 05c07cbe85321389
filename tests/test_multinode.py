"""A real two-node Ray cluster on this machine: fault injection and job submission.

A head node (1 CPU) and a worker node (1 CPU, custom resource ``worker_node: 2``) are started
with ``ray start --block``, each with its own temp dir, free ports and a per-test auth token
(RAY_AUTH_MODE=token). Ray advertises the machine's routable IP for its nodes even when given
127.0.0.1; every address this test dials is loopback.

1. A sweep whose trials request ``worker_node`` runs with ``mtlsweep run --address``; once the
   first trial has written its rows, the worker node's raylet is SIGKILLed (trials die with
   it), a new worker node joins, and the sweep must still complete: failed trials retried,
   every trial's rows present exactly once.
2. A tiny sweep goes through ``mtlsweep submit`` (Ray Jobs, working dir shipped) and its
   results are read back with ``orchestrator.results.read_results``.

Only processes this test started are stopped (by recorded pid / process tree), in `finally`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")

# Rows are identified by these columns; a duplicate is two rows with the same key.
ROW_KEY = ["trial_id", "epoch", "kind", "surrogate_id", "target_id", "attack_method",
           "objective", "eps", "steps", "task", "metric"]

SWEEP = textwrap.dedent("""\
    dataset: {name: scenes, size: 16, train: 32, val: 8, test: 8}
    tasks: [segment_semantic, scene_class]
    model: {width: 4}
    layouts: [1, 4]
    training: {epochs: 2, keep_epochs: [1, 2], batch_size: 8, rho: [0, 0.5], seeds: %s}
    attacks: {methods: [fgsm, pgd], objectives: [total, dgba], eps: [8], steps: 2,
              eval_samples: 8, batch_size: 8}
    resources: {cpu: 0.5, gpu: 0, custom: {worker_node: 1}}
    max_concurrent: 2
    max_failures: 3
    """)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live process below ``pid`` (start time guards pid reuse)."""
    tree, out, todo = _children(), {}, [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None:
                out[child] = started
                todo.append(child)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class LocalCluster:
    """Ray nodes started by this test, and only those, on loopback with a private token."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(24)
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                        RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        self.env.pop("PYTHONPATH", None)  # nodes import project code only from shipped dirs
        # Trials' scratch dirs (left behind by the processes the fault kills) stay in ours.
        (root / "tmp").mkdir()
        self.env["TMPDIR"] = str(root / "tmp")
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []
        self.procs: dict[int, str] = {}  # every process seen under our nodes (pid -> start)
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats",
                                 "--node-ip-address=127.0.0.1", *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def start_head(self) -> None:
        self._start("head", [
            "--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={self.root / 'h'}"])
        self.wait_for(lambda nodes: len(nodes) >= 1, "the head node")

    def start_worker(self, index: int) -> subprocess.Popen:
        proc = self._start(f"worker{index}", [
            f"--address={self.address}", "--num-cpus=1", '--resources={"worker_node": 2}',
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={self.root / f'w{index}'}"])
        self.wait_for(lambda nodes: sum(n["resources_total"].get("worker_node", 0) > 0
                                        for n in nodes) >= 1, f"worker node {index}")
        return proc

    def alive_nodes(self) -> list[dict]:
        request = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?limit=100",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            nodes = json.load(response)["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.nodes:
                if proc.poll() is not None and proc in self.nodes[-1:]:
                    raise RuntimeError(f"{what} exited early (rc {proc.returncode}); see logs "
                                       f"in {self.root}")
            try:
                if condition(self.alive_nodes()):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} did not come up within {timeout:g} s")

    def remember(self) -> None:
        for node in self.nodes:
            self.procs.update(descendants(node.pid))

    def raylet_of(self, node: subprocess.Popen) -> int:
        for pid in descendants(node.pid):
            argv = _cmdline(pid)
            if argv and argv[0].endswith("/raylet"):
                return pid
        raise RuntimeError(f"no raylet below ray start pid {node.pid}")

    def stop(self) -> None:
        """SIGTERM our `ray start --block` processes (they stop their node), then SIGKILL
        whatever of ours is left, including workers orphaned by the injected fault."""
        self.remember()
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(timeout=40)
            except subprocess.TimeoutExpired:
                node.kill()
        for pid, started in self.procs.items():
            if _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="mtlc", dir="/tmp"))  # short: Ray's socket paths
    local = LocalCluster(root)
    try:
        local.start_head()
        local.start_worker(0)
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


def project_copy(dest: Path, sweep_text: str) -> Path:
    """A user's checkout: the packages, pyproject and one sweep (what a job ships)."""
    for package in ("mtl", "orchestrator"):
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    (dest / "sweeps").mkdir()
    (dest / "sweeps" / "tiny.yaml").write_text(sweep_text)
    return dest


def read_table(results: Path, table: str):
    from orchestrator.results import read_results
    return read_results(results, table).collect()


def check_results(storage: Path, sweep: str, expected_trials: int) -> "object":
    import polars as pl

    from orchestrator.results import read_results

    frame = read_results(storage / sweep / "results").collect()
    assert frame.height > 0
    per_trial = frame.group_by("trial_id").len()
    assert per_trial.height == expected_trials, per_trial  # 0 trials lost
    assert per_trial["len"].n_unique() == 1, per_trial     # same rows in every trial: 0 lost
    dup = frame.group_by(ROW_KEY).len().filter(pl.col("len") > 1)
    assert dup.height == 0, dup                            # 0 duplicated
    attempts = frame.group_by("trial_id").agg(pl.col("attempt").n_unique().alias("n"))
    assert attempts["n"].max() == 1, attempts              # one attempt's rows per trial
    return frame


def in_flight(experiment: Path, results: Path) -> bool:
    """True once a trial has written its rows while another has started and not finished.

    Started trials are those with an attempt record (``<sweep>/attempts/<trial_id>/``, written
    when a trial begins); without that directory, any finished trial will do.
    """
    finished = {p.stem for p in results.glob("*.parquet")} if results.is_dir() else set()
    if not finished:
        return False
    attempts = experiment / "attempts"
    if not attempts.is_dir():
        return True
    return any(p.name not in finished for p in attempts.iterdir())


def test_sweep_survives_a_killed_worker_node(cluster, tmp_path):
    project = project_copy(tmp_path / "project", SWEEP % "[0, 1]")
    storage = tmp_path / "runs"
    env = dict(cluster.env, PYTHONPATH=str(project))
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", "sweeps/tiny.yaml", "--storage",
         str(storage), "--address", cluster.address], cwd=project, env=env,
        stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        results = storage / "tiny" / "results" / "measurements"
        deadline = time.monotonic() + 300
        while not in_flight(storage / "tiny", results):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no trial finished in 300 s"
            time.sleep(0.2)
        victim = cluster.nodes[1]
        cluster.remember()
        os.kill(cluster.raylet_of(victim), signal.SIGKILL)  # the worker node dies mid-sweep
        victim.wait(timeout=60)
        done_at_kill = len(list(results.glob("*.parquet")))
        cluster.start_worker(1)
        rc = driver.wait(timeout=420)
        log = (tmp_path / "driver.log").read_text()
        assert rc == 0, log[-6000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        cluster.remember()
    assert done_at_kill < 8, "the sweep had finished before the fault: nothing was tested"
    frame = check_results(storage, "tiny", expected_trials=8)
    epochs = read_table(storage / "tiny" / "results", "epochs")
    assert epochs["trial_id"].n_unique() == 8
    assert epochs.group_by("trial_id", "epoch", "quantity").len()["len"].max() == 1
    retried = frame.filter(frame["attempt"] > 1)["trial_id"].unique().sort()
    print(f"fault injected with {done_at_kill}/8 trials finished; retried after it: "
          f"{retried.to_list()}")
    if retried.len() == 0:  # rows above are complete and unduplicated either way
        pytest.skip("the in-flight trial had reported before its node died, so no retry was "
                    "exercised this time (timing; see the closing note of issue 9)")


def test_submit_through_ray_jobs(cluster, tmp_path):
    project = project_copy(tmp_path / "project",
                           SWEEP.replace("layouts: [1, 4]", "layouts: [2]")
                           .replace("rho: [0, 0.5]", "rho: [0]") % "[0]")
    storage = tmp_path / "runs"
    env = dict(cluster.env, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "submit", str(project / "sweeps/tiny.yaml"),
         "--address", cluster.dashboard, "--storage", str(storage), "--no-pip",
         "--working-dir", str(project)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "submitted job mtlsweep-tiny-" in out.stdout
    assert out.stdout.rstrip().endswith("SUCCEEDED")
    job_id = out.stdout.split("submitted job ", 1)[1].split()[0]
    status = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", job_id, "--address",
         cluster.dashboard], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "status:     SUCCEEDED" in status.stdout, status
    check_results(storage, "tiny", expected_trials=1)
    # Without the token the same cluster refuses us: auth really is on.
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    bare["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    refused = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "status", job_id, "--address",
         cluster.dashboard], env=bare, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "uthentication" in refused.stderr, refused
