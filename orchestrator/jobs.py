"""Submit a sweep to a Ray cluster as a Ray job, and follow it (Ray Jobs SDK).

A job ships the project directory (``working_dir``) to the cluster and runs
``python -m orchestrator.cli run SWEEP.yaml --storage STORAGE --address auto`` there; that
driver joins the cluster (the job supervisor sets ``RAY_ADDRESS``) and runs the trials on its
nodes. Results go to ``STORAGE``, which every node must be able to write: an absolute path on
a shared filesystem or a bucket URI.

Token authentication: Ray >= 2.59 clusters may require a token, and Ray's own clients send it
only when ``RAY_AUTH_MODE=token`` is set in the client's environment. We do not depend on that
switch: when a token is found (``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``,
or ``~/.ray/auth_token``) it is sent as an ``Authorization: Bearer`` header, unless
``RAY_AUTH_MODE=disabled``. A cluster without token auth ignores the header.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

# Never shipped: environments, results, caches, VCS data, build outputs.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".venv", "venv", ".git", "runs", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
    ".mypy_cache", ".ruff_cache", ".cache", "*.egg-info", "/build", "/dist", ".whl", ".gl",
)
# Installed on the cluster image, not per job: torch comes from a CUDA index there, and ray
# must be the very version the cluster runs.
CLUSTER_PROVIDED: tuple[str, ...] = ("ray",)
TORCH: str = "torch"
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_ADDRESS = re.compile(r"^https?://[^/\s:]+(:\d+)?/?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- what gets shipped ---------------------------------------------------------------------------
def find_project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) with mtlsweep's pyproject."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"mtlsweep"',
                                             pyproject.read_text()):
            return folder
    raise FileNotFoundError(f"working_dir: no mtlsweep pyproject.toml at or above {here}; run "
                            "from the project checkout or pass --working-dir")


def _requirement_name(requirement: str) -> str:
    match = _REQ_NAME.match(requirement)
    if not match:
        raise ValueError(f"dependencies: cannot read a package name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def project_requirements(pyproject: str | os.PathLike, *, include_torch: bool = False,
                         extras: Sequence[str] = ()) -> list[str]:
    """pip requirements of the project (``[project].dependencies`` plus ``extras``).

    ``ray`` is always left out (the cluster runs its own, and a job must use that very
    version); ``torch`` is left out unless ``include_torch`` (cluster images install a CUDA
    build from PyTorch's index, which a plain ``pip install torch`` in a job would replace).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ValueError("pip: reading pyproject.toml needs Python >= 3.11 or the tomli "
                             "package; pass --no-pip if the cluster has the project "
                             "installed") from None
    path = Path(pyproject)
    if not path.is_file():
        raise FileNotFoundError(f"pyproject: {str(path)!r} does not exist")
    project = tomllib.loads(path.read_text()).get("project", {})
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"extras: {extra!r} is not an extra of the project; allowed: "
                             f"{', '.join(sorted(optional)) or 'none'}")
        requirements += optional[extra]
    skip = set(CLUSTER_PROVIDED) | (set() if include_torch else {TORCH})
    out: list[str] = []
    for requirement in requirements:
        if _requirement_name(requirement) not in skip and requirement not in out:
            out.append(requirement)
    return out


def build_runtime_env(working_dir: str | os.PathLike, *, pip: bool = True,
                      include_torch: bool = False, excludes: Sequence[str] = (),
                      env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime_env: the project directory, its pip list, extra env vars."""
    root = Path(working_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"working_dir: {str(root)!r} is not a directory")
    env: dict[str, Any] = {"working_dir": str(root),
                           "excludes": list(dict.fromkeys([*DEFAULT_EXCLUDES, *excludes]))}
    if pip:
        env["pip"] = project_requirements(root / "pyproject.toml", include_torch=include_torch)
    if env_vars:
        for key, value in env_vars.items():
            if not _ENV_NAME.match(key) or not isinstance(value, str):
                raise ValueError(f"env: expected NAME=VALUE with NAME of letters, digits and _, "
                                 f"got {key!r}={value!r}")
        env["env_vars"] = dict(env_vars)
    return env


def check_storage(storage: str | None) -> str:
    """Storage every node can reach: an absolute (shared) path or a URI, never a relative one."""
    if not storage:
        raise ValueError("storage: a cluster sweep needs --storage (or `storage:` in the sweep "
                         "YAML): an absolute path on a filesystem all nodes share, e.g. "
                         "/mnt/shared/runs, or a bucket URI such as s3://bucket/runs")
    if "://" in storage or storage.startswith("/"):
        return storage
    raise ValueError(f"storage: {storage!r} is relative; on a cluster it would land in the job's "
                     "temporary working directory. Give an absolute path on shared storage "
                     "(e.g. /mnt/shared/runs) or a bucket URI (s3://..., gs://...)")


def check_model_store(storage: str, store_path: str | None) -> None:
    """The model store needs file locks on a filesystem every node mounts: under a shared
    ``storage`` path by default; with a bucket, ``store.path`` must name such a directory."""
    from orchestrator.store import model_store_dir

    if store_path is not None and not store_path.startswith("/"):
        raise ValueError(f"store.path: {store_path!r} is relative; on a cluster give an absolute "
                         "path on a filesystem every node mounts (e.g. /mnt/shared/models)")
    model_store_dir(storage, store_path)  # ValueError naming store.path for a bare bucket


def build_entrypoint(sweep: str, storage: str, *, python: str = "python") -> str:
    """The command the job runs on the head node (``sweep`` relative to the working dir).

    ``--address auto`` joins the cluster the job runs in (the job supervisor sets
    RAY_ADDRESS), rather than starting a private Ray on the head node.
    """
    return shlex.join([python, "-m", "orchestrator.cli", "run", sweep, "--storage", storage,
                       "--address", "auto"])


def relative_sweep_path(sweep: str | os.PathLike, working_dir: str | os.PathLike) -> str:
    """``sweep`` as a POSIX path inside ``working_dir`` (the job only sees shipped files)."""
    path, root = Path(sweep).resolve(), Path(working_dir).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"sweep: {str(sweep)!r} does not exist")
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"sweep: {str(sweep)!r} is outside the working directory {str(root)!r} "
                         "that is shipped to the cluster; move it inside (e.g. sweeps/)") from None


# --- talking to the cluster ----------------------------------------------------------------------
def resolve_address(address: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The dashboard URL: ``address``, else $RAY_API_SERVER_ADDRESS, else an http $RAY_ADDRESS."""
    if not address:
        address = env.get("RAY_API_SERVER_ADDRESS") or ""
        if not address and env.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
            address = env["RAY_ADDRESS"]
    if not address:
        raise ValueError("address: give --address http://HEAD:8265 (the Ray dashboard) or set "
                         "RAY_API_SERVER_ADDRESS")
    if not _ADDRESS.match(address):
        raise ValueError(f"address: expected http://HOST:PORT or https://HOST:PORT of the Ray "
                         f"dashboard (default port 8265), got {address!r}")
    return address.rstrip("/")


def auth_token(env: Mapping[str, str] = os.environ) -> str | None:
    """The cluster token from RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    named = env.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    if named and not path.is_file():
        raise FileNotFoundError(f"RAY_AUTH_TOKEN_PATH: {named!r} does not exist")
    if path.is_file():
        return path.read_text().strip() or None
    return None


def auth_headers(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` when a token is configured, else ``{}``."""
    token = auth_token(env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str | None = None, *, client_factory: Any = None) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address``, sending the token if any."""
    url = resolve_address(address)
    headers = auth_headers()
    if client_factory is None:
        from ray.job_submission import JobSubmissionClient as client_factory
    try:
        return client_factory(url, headers=headers or None)
    except ConnectionError as err:
        raise ConnectionError(f"cannot reach the Ray dashboard at {url}: {err}. Is the cluster "
                              "up (`ray up cluster.yaml`) and the dashboard port forwarded "
                              "(`ray dashboard cluster.yaml`)?") from None


def new_submission_id(sweep_name: str) -> str:
    """A readable, unique job id: mtlsweep-<sweep>-<UTC time>-<4 hex>."""
    return f"mtlsweep-{sweep_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-" \
           f"{secrets.token_hex(2)}"


def submit_sweep(client: Any, sweep: str | os.PathLike, *, storage: str | None = None,
                 working_dir: str | os.PathLike | None = None, pip: bool = True,
                 include_torch: bool = False, excludes: Sequence[str] = (),
                 env_vars: Mapping[str, str] | None = None,
                 submission_id: str | None = None) -> str:
    """Validate the sweep locally, then submit it as a Ray job; returns the job id.

    The sweep is parsed with the same validation the run command uses, so a broken YAML fails
    here and not minutes later on the cluster. Storage defaults to the sweep's ``storage``.
    """
    from orchestrator.spec import load_spec

    root = Path(working_dir).resolve() if working_dir else find_project_root()
    rel = relative_sweep_path(sweep, root)
    spec = load_spec(Path(sweep), storage=storage)
    target = check_storage(spec.storage)
    check_model_store(target, spec.store_path)
    runtime_env = build_runtime_env(root, pip=pip, include_torch=include_torch,
                                    excludes=excludes, env_vars=env_vars)
    return client.submit_job(
        entrypoint=build_entrypoint(rel, target), runtime_env=runtime_env,
        submission_id=submission_id or new_submission_id(spec.name),
        metadata={"tool": "mtlsweep", "sweep": spec.name, "storage": target})


def follow_commands(job_id: str, address: str, token_auth: bool = False) -> list[str]:
    """How to follow a job's logs, with our CLI and with Ray's (which sends the token only
    when RAY_AUTH_MODE=token is set)."""
    prefix = "RAY_AUTH_MODE=token " if token_auth else ""
    return [f"mtlsweep logs {job_id} --address {address} --follow",
            f"{prefix}ray job logs -f {job_id} --address {address}"]


def follow_logs(client: Any, job_id: str, out: TextIO | None = None) -> str:
    """Stream the job's logs to ``out`` (stdout) until it ends; returns its final status."""
    out = out or sys.stdout
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    deadline = time.monotonic() + 30  # the log stream may close just before the status flips
    while not _is_terminal(status) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return str(status.value if hasattr(status, "value") else status)


def wait_for(client: Any, job_id: str, timeout: float, poll: float = 1.0) -> str:
    """Poll until the job reaches a terminal status; returns it (TimeoutError past timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_job_status(job_id)
        if _is_terminal(status):
            return str(status.value if hasattr(status, "value") else status)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:g} s")
        time.sleep(poll)


def _is_terminal(status: Any) -> bool:
    return str(getattr(status, "value", status)) in ("SUCCEEDED", "FAILED", "STOPPED")


def describe_job(info: Any) -> str:
    """A few lines about a job (``JobDetails`` / ``JobInfo``) for `mtlsweep status`."""
    def when(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000)) if ms else "-"

    status = getattr(info, "status", "?")
    lines = [f"status:     {getattr(status, 'value', status)}",
             f"entrypoint: {getattr(info, 'entrypoint', '?')}",
             f"started:    {when(getattr(info, 'start_time', None))}",
             f"ended:      {when(getattr(info, 'end_time', None))}"]
    metadata = getattr(info, "metadata", None) or {}
    for key in ("sweep", "storage"):
        if key in metadata:
            lines.append(f"{key + ':':<11} {metadata[key]}")
    if getattr(info, "message", None):
        lines.append(f"message:    {info.message.strip().splitlines()[0]}")
    return "\n".join(lines)
