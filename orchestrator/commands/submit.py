"""`mtlsweep submit | status | logs`: run a sweep on a Ray cluster as a Ray job.

    mtlsweep submit sweeps/demo.yaml --address http://127.0.0.1:8265 --storage /mnt/shared/runs
    mtlsweep status JOB_ID --address http://127.0.0.1:8265
    mtlsweep logs JOB_ID --address http://127.0.0.1:8265 --follow

`submit` validates the sweep locally, ships the project directory and its pip requirements
(torch and ray excluded by default: the cluster image provides them) and runs
`python -m orchestrator.cli run SWEEP --storage STORAGE --address auto` on the cluster.
Without --no-wait it streams the job's logs and exits 0 only if the job succeeded.
See docs/cluster.md.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator import jobs

_ADDRESS_HELP = ("Ray dashboard URL, e.g. http://127.0.0.1:8265 (default: "
                 "$RAY_API_SERVER_ADDRESS)")


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `submit`, `status` and `logs`."""
    sub = subparsers.add_parser(
        "submit", help="run a sweep on a Ray cluster (Ray Jobs)",
        description="Submit a sweep as a Ray job: ship the project directory, run the sweep "
                    "on the cluster, write results to shared storage or a bucket.")
    sub.add_argument("sweep", help="sweep YAML, inside the shipped working directory")
    sub.add_argument("--address", default=None, help=_ADDRESS_HELP)
    sub.add_argument("--storage", default=None, metavar="URI_OR_SHARED_DIR",
                     help="where results go: an absolute path all nodes share or a bucket URI "
                          "(default: the sweep's `storage:`)")
    sub.add_argument("--no-wait", action="store_true",
                     help="print the job id and return instead of streaming its logs")
    sub.add_argument("--working-dir", default=None,
                     help="directory to ship (default: the project root above the cwd)")
    sub.add_argument("--include-torch", action="store_true",
                     help="also pip-install torch in the job (default: use the cluster's, "
                          "which setup_commands install from PyTorch's CUDA index)")
    sub.add_argument("--no-pip", action="store_true",
                     help="ship no pip requirements (the cluster image has the project "
                          "installed, or the nodes have no internet)")
    sub.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="extra gitignore-style pattern not to ship (repeatable)")
    sub.add_argument("--env", action="append", default=[], type=_env_pair, metavar="NAME=VALUE",
                     help="environment variable for the job (repeatable)")
    sub.add_argument("--job-id", default=None,
                     help="submission id (default: mtlsweep-<sweep>-<UTC time>-<hex>)")
    sub.set_defaults(func=run_submit)

    status = subparsers.add_parser("status", help="status of a submitted sweep job")
    status.add_argument("job_id", metavar="JOB")
    status.add_argument("--address", default=None, help=_ADDRESS_HELP)
    status.set_defaults(func=run_status)

    logs = subparsers.add_parser("logs", help="logs of a submitted sweep job")
    logs.add_argument("job_id", metavar="JOB")
    logs.add_argument("--address", default=None, help=_ADDRESS_HELP)
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep streaming until the job ends")
    logs.set_defaults(func=run_logs)


def _errors() -> tuple[type[BaseException], ...]:
    """What a cluster call raises when unreachable, refused or unauthenticated."""
    from ray.exceptions import RayError  # imported late: `mtlsweep --help` stays fast

    return (ConnectionError, RuntimeError, RayError)


def _fail(command: str, err: BaseException) -> int:
    print(f"mtlsweep {command}: error: {err}", file=sys.stderr)
    return 1


def _client(address: str | None):
    return jobs.connect(address)


def run_submit(args: argparse.Namespace) -> int:
    """Submit; then follow the logs unless --no-wait. Exit 0 iff the job succeeded."""
    address = jobs.resolve_address(args.address)
    try:
        client = _client(address)
        job_id = jobs.submit_sweep(
            client, args.sweep, storage=args.storage, working_dir=args.working_dir,
            pip=not args.no_pip, include_torch=args.include_torch, excludes=args.exclude,
            env_vars=dict(args.env), submission_id=args.job_id)
    except _errors() as err:
        return _fail("submit", err)
    token = bool(jobs.auth_headers())
    print(f"submitted job {job_id}")
    print("follow its logs with:")
    for line in jobs.follow_commands(job_id, address, token_auth=token):
        print(f"  {line}")
    if args.no_wait:
        return 0
    try:
        status = jobs.follow_logs(client, job_id)
    except KeyboardInterrupt:
        print(f"\ndetached; job {job_id} keeps running (`mtlsweep status {job_id}`)",
              file=sys.stderr)
        return 130
    except _errors() as err:
        return _fail("submit", f"lost the log stream of job {job_id} ({err}); it may still "
                     f"be running: `mtlsweep status {job_id}`")
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def run_status(args: argparse.Namespace) -> int:
    """Print the job's status; exit 0 unless it failed or was stopped."""
    try:
        info = _client(args.address).get_job_info(args.job_id)
    except _errors() as err:
        return _fail("status", err)
    print(f"job:        {args.job_id}")
    print(jobs.describe_job(info))
    state = str(getattr(info.status, "value", info.status))
    return 1 if state in ("FAILED", "STOPPED") else 0


def run_logs(args: argparse.Namespace) -> int:
    """Print the job's logs so far, or stream them with --follow."""
    try:
        client = _client(args.address)
        if args.follow:
            status = jobs.follow_logs(client, args.job_id)
            print(f"job {args.job_id}: {status}", file=sys.stderr)
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(client.get_job_logs(args.job_id))
    except _errors() as err:
        return _fail("logs", err)
    except KeyboardInterrupt:
        return 130
    return 0
