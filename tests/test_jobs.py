"""Ray job submission: what is shipped, where results go, token auth, the submit/status/logs CLI.

The Ray Jobs client is replaced by a recording fake here; tests/test_multinode.py submits to a
real local cluster.
"""
from __future__ import annotations

import shlex
import shutil
import textwrap
import types
from pathlib import Path

import pytest

from orchestrator import cli, jobs

ROOT = Path(__file__).resolve().parents[1]

SWEEP = textwrap.dedent("""\
    name: tiny
    tasks: [segment_semantic, depth_zbuffer]
    dataset: {name: scenes, size: 16, train: 8, val: 4, test: 4}
    training: {epochs: 1, batch_size: 4}
    attacks: {methods: [fgsm], objectives: [dgba], eps: [8], eval_samples: 4}
    """)


class FakeClient:
    """Records calls; plays back a job whose logs and status are scripted."""

    def __init__(self, address="http://127.0.0.1:8265", headers=None, statuses=("SUCCEEDED",),
                 chunks=("line 1\n", "line 2\n")):
        self.address, self.headers = address, headers
        self.submitted: list[dict] = []
        self.statuses = list(statuses)
        self.chunks = list(chunks)

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def tail_job_logs(self, job_id):
        for chunk in self.chunks:
            yield chunk

    def get_job_logs(self, job_id):
        return "".join(self.chunks)

    def get_job_info(self, job_id):
        return types.SimpleNamespace(
            status=self.statuses[-1], entrypoint="python -m orchestrator.cli run s.yaml",
            start_time=1_700_000_000_000, end_time=None, message="Job finished successfully.",
            metadata={"sweep": "tiny", "storage": "/mnt/shared/runs"})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A shippable project dir: the real pyproject plus a sweep under sweeps/."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.yaml").write_text(SWEEP)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch, tmp_path_factory):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                 "RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


# --- requirements and runtime_env ----------------------------------------------------------------
def test_requirements_come_from_pyproject_without_torch_and_ray():
    reqs = jobs.project_requirements(ROOT / "pyproject.toml")
    names = {jobs._requirement_name(r) for r in reqs}
    assert "torch" not in names and "ray" not in names
    assert {"numpy", "pulp", "pyarrow", "polars", "pyyaml"} <= names
    with_torch = jobs.project_requirements(ROOT / "pyproject.toml", include_torch=True)
    assert [r for r in with_torch if jobs._requirement_name(r) == "torch"]
    assert "ray" not in {jobs._requirement_name(r) for r in with_torch}


def test_requirement_names_are_normalised(tmp_path):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "x"
        dependencies = ["Torch>=2.1", "ray[tune]>=2.9", "PyYAML", "my_pkg.ext ; python_version>'3'"]
        [project.optional-dependencies]
        extra = ["scipy"]
        """))
    assert jobs.project_requirements(tmp_path / "pyproject.toml", extras=["extra"]) == [
        "PyYAML", "my_pkg.ext ; python_version>'3'", "scipy"]
    with pytest.raises(ValueError, match="^extras: 'gpu' is not an extra.*allowed: extra"):
        jobs.project_requirements(tmp_path / "pyproject.toml", extras=["gpu"])


def test_runtime_env_ships_the_project_not_its_venv_or_results(project):
    env = jobs.build_runtime_env(project, excludes=["data/big"], env_vars={"MTLSWEEP_X": "1"})
    assert env["working_dir"] == str(project.resolve())
    for pattern in (".venv", ".git", "runs", "__pycache__", "*.egg-info", "data/big"):
        assert pattern in env["excludes"]
    assert env["pip"] == jobs.project_requirements(project / "pyproject.toml")
    assert env["env_vars"] == {"MTLSWEEP_X": "1"}
    assert "pip" not in jobs.build_runtime_env(project, pip=False)
    with pytest.raises(ValueError, match="^env:"):
        jobs.build_runtime_env(project, env_vars={"1BAD": "x"})
    with pytest.raises(FileNotFoundError, match="^working_dir:"):
        jobs.build_runtime_env(project / "missing")


def test_excluded_patterns_really_exclude_with_rays_packager(project):
    """Ray's own packaging honours our excludes: no venv, results or .git in the upload."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    for junk in (".venv/lib/x.py", "runs/s/results/m.parquet", ".git/HEAD",
                 "pkg/__pycache__/a.pyc"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("x")
    (project / "pkg" / "keep.py").write_text("x")
    env = jobs.build_runtime_env(project, pip=False)
    target = project.parent / f"{project.name}.zip"
    create_package(str(project), target, include_gitignore=False, excludes=env["excludes"])
    shipped = zipfile.ZipFile(target).namelist()
    assert "pkg/keep.py" in shipped and "sweeps/tiny.yaml" in shipped
    assert not [p for p in shipped if p.startswith((".venv", "runs", ".git")) or p.endswith(".pyc")]


# --- storage, sweep path, entrypoint -------------------------------------------------------------
@pytest.mark.parametrize("storage", ["/mnt/shared/runs", "s3://bucket/runs", "gs://b/r",
                                     "file:///mnt/nfs/runs"])
def test_shared_storage_accepted(storage):
    assert jobs.check_storage(storage) == storage


@pytest.mark.parametrize("storage", [None, "", "runs", "./runs", "~/runs"])
def test_relative_or_missing_storage_rejected(storage):
    with pytest.raises(ValueError, match="^storage:"):
        jobs.check_storage(storage)


def test_entrypoint_quotes_paths():
    cmd = jobs.build_entrypoint("sweeps/my sweep.yaml", "/mnt/shared/runs x")
    assert shlex.split(cmd) == ["python", "-m", "orchestrator.cli", "run", "sweeps/my sweep.yaml",
                                "--storage", "/mnt/shared/runs x", "--address", "auto"]


def test_sweep_must_be_shipped(project, tmp_path_factory):
    assert jobs.relative_sweep_path(project / "sweeps" / "tiny.yaml", project) == "sweeps/tiny.yaml"
    outside = tmp_path_factory.mktemp("elsewhere") / "s.yaml"
    outside.write_text(SWEEP)
    with pytest.raises(ValueError, match="^sweep: .* outside the working directory"):
        jobs.relative_sweep_path(outside, project)
    with pytest.raises(FileNotFoundError, match="^sweep:"):
        jobs.relative_sweep_path(project / "nope.yaml", project)


def test_project_root_is_found_from_a_subdirectory(project):
    assert jobs.find_project_root(project / "sweeps") == project.resolve()
    with pytest.raises(FileNotFoundError, match="^working_dir:"):
        jobs.find_project_root(Path("/"))


# --- address and token auth ----------------------------------------------------------------------
def test_address_from_flag_or_environment(monkeypatch):
    assert jobs.resolve_address("http://10.0.0.1:8265/") == "http://10.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not a dashboard
    with pytest.raises(ValueError, match="^address: give --address"):
        jobs.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://h:8265")
    assert jobs.resolve_address(None) == "http://h:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://head.example:443")
    assert jobs.resolve_address(None) == "https://head.example:443"
    for bad in ("head:8265", "ray://h:10001", "http://h:8265/api/x"):
        with pytest.raises(ValueError, match="^address: expected http://HOST:PORT"):
            jobs.resolve_address(bad)


def test_token_sources_in_priority_order(monkeypatch, tmp_path):
    assert jobs.auth_headers() == {}
    home_token = Path.home() / ".ray" / "auth_token"
    home_token.parent.mkdir(parents=True)
    home_token.write_text("home-token\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer home-token"}
    (tmp_path / "tok").write_text("  file-token ")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_token() == "file-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert jobs.auth_token() == "env-token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}


def test_named_token_file_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="^RAY_AUTH_TOKEN_PATH:"):
        jobs.auth_token()


def test_connect_sends_the_token_as_a_bearer_header(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    client = jobs.connect("http://127.0.0.1:8265", client_factory=FakeClient)
    assert client.headers == {"Authorization": "Bearer s3cret"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert jobs.connect("http://127.0.0.1:8265", client_factory=FakeClient).headers is None


def test_connect_explains_an_unreachable_dashboard():
    def refuse(url, headers=None):
        raise ConnectionError("Failed to connect to Ray")

    with pytest.raises(ConnectionError, match="cannot reach the Ray dashboard at http://h:1"):
        jobs.connect("http://h:1", client_factory=refuse)


# --- submission ----------------------------------------------------------------------------------
def test_submit_sweep_builds_the_job(project):
    sweep = project / "sweeps" / "tiny.yaml"
    sweep.write_text(SWEEP + "store: {path: /mnt/shared/models}\n")
    client = FakeClient()
    job_id = jobs.submit_sweep(client, sweep, storage="s3://bucket/runs", working_dir=project)
    (call,) = client.submitted
    assert job_id == call["submission_id"] and job_id.startswith("mtlsweep-tiny-")
    assert shlex.split(call["entrypoint"]) == [
        "python", "-m", "orchestrator.cli", "run", "sweeps/tiny.yaml", "--storage",
        "s3://bucket/runs", "--address", "auto"]
    assert call["runtime_env"]["working_dir"] == str(project.resolve())
    assert "torch" not in " ".join(call["runtime_env"]["pip"])
    assert call["metadata"] == {"tool": "mtlsweep", "sweep": "tiny", "storage": "s3://bucket/runs"}


def test_submit_uses_the_sweeps_storage_and_validates_before_submitting(project):
    sweep = project / "sweeps" / "tiny.yaml"
    sweep.write_text(SWEEP + "storage: /mnt/shared/runs\n")
    client = FakeClient()
    jobs.submit_sweep(client, sweep, working_dir=project, pip=False, submission_id="j1")
    assert "--storage /mnt/shared/runs " in client.submitted[0]["entrypoint"]
    assert "pip" not in client.submitted[0]["runtime_env"]
    sweep.write_text(SWEEP.replace("dgba", "dgbaa"))
    with pytest.raises(ValueError, match="attacks.objectives"):
        jobs.submit_sweep(client, sweep, storage="/mnt/shared/runs", working_dir=project)
    sweep.write_text(SWEEP)
    with pytest.raises(ValueError, match="^storage:"):
        jobs.submit_sweep(client, sweep, working_dir=project)
    assert len(client.submitted) == 1  # nothing submitted after a bad input


# --- CLI -----------------------------------------------------------------------------------------
@pytest.fixture
def fake(monkeypatch):
    client = FakeClient(statuses=("RUNNING", "SUCCEEDED"))
    monkeypatch.setattr(jobs, "connect", lambda address=None, **kw: client)
    return client


def test_cli_submit_no_wait_prints_id_and_how_to_follow(project, fake, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    code = cli.main(["submit", str(project / "sweeps" / "tiny.yaml"), "--address",
                     "http://127.0.0.1:8265", "--storage", "/mnt/shared/runs", "--no-wait",
                     "--working-dir", str(project), "--job-id", "job-7", "--env", "A=b=c"])
    out = capsys.readouterr().out
    assert code == 0
    assert "submitted job job-7" in out
    assert "mtlsweep logs job-7 --address http://127.0.0.1:8265 --follow" in out
    assert "RAY_AUTH_MODE=token ray job logs -f job-7 --address http://127.0.0.1:8265" in out
    assert fake.submitted[0]["runtime_env"]["env_vars"] == {"A": "b=c"}


def test_cli_submit_waits_and_reports_the_outcome(project, fake, capsys):
    args = ["submit", str(project / "sweeps" / "tiny.yaml"), "--address", "http://h:8265",
            "--storage", "/mnt/shared/runs", "--working-dir", str(project), "--no-pip"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "line 1\nline 2\n" in out and out.rstrip().endswith("SUCCEEDED")
    fake.statuses = ["FAILED"]
    assert cli.main(args) == 1


def test_cli_bad_input_is_a_clear_error(project, fake, capsys):
    code = cli.main(["submit", str(project / "sweeps" / "tiny.yaml"), "--address", "h:8265"])
    assert code == 2
    assert "address: expected http://HOST:PORT" in capsys.readouterr().err
    code = cli.main(["submit", str(project / "sweeps" / "tiny.yaml"), "--address", "http://h:1",
                     "--storage", "runs", "--working-dir", str(project)])
    assert code == 2 and "storage: 'runs' is relative" in capsys.readouterr().err
    assert fake.submitted == []


def test_cli_status_and_logs(fake, capsys):
    assert cli.main(["status", "job-7", "--address", "http://h:8265"]) == 0
    out = capsys.readouterr().out
    assert "job:        job-7" in out and "status:     SUCCEEDED" in out
    assert "sweep:      tiny" in out and "storage:    /mnt/shared/runs" in out
    assert cli.main(["logs", "job-7", "--address", "http://h:8265"]) == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"
    fake.statuses = ["FAILED"]
    assert cli.main(["logs", "job-7", "--address", "http://h:8265", "--follow"]) == 1
    assert cli.main(["status", "job-7", "--address", "http://h:8265"]) == 1


def test_cli_reports_an_unreachable_cluster(monkeypatch, capsys):
    def refuse(address=None, **kw):
        raise ConnectionError("cannot reach the Ray dashboard at http://h:1")

    monkeypatch.setattr(jobs, "connect", refuse)
    assert cli.main(["status", "job-7", "--address", "http://h:1"]) == 1
    assert "mtlsweep status: error: cannot reach" in capsys.readouterr().err


def test_model_store_must_be_shared():
    jobs.check_model_store("/mnt/shared/runs", None)
    jobs.check_model_store("s3://bucket/runs", "/mnt/shared/models")
    with pytest.raises(ValueError, match="^store.path: storage 's3://bucket/runs'"):
        jobs.check_model_store("s3://bucket/runs", None)
    with pytest.raises(ValueError, match="^store.path: 'models' is relative"):
        jobs.check_model_store("/mnt/shared/runs", "models")


def test_bucket_without_store_path_is_refused_before_submitting(project):
    client = FakeClient()
    with pytest.raises(ValueError, match="^store.path:"):
        jobs.submit_sweep(client, project / "sweeps" / "tiny.yaml", storage="s3://b/runs",
                          working_dir=project)
    assert client.submitted == []


def test_rays_runtime_env_accepts_what_we_build(project):
    """Ray's own RuntimeEnv validation (offline) takes our working_dir/excludes/pip/env_vars."""
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**jobs.build_runtime_env(project, env_vars={"A": "1"}))
    assert env["working_dir"] == str(project.resolve())
    assert env["env_vars"] == {"A": "1"}
    assert any("polars" in p for p in env["pip"]["packages"])
