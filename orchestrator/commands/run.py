"""`mtlsweep run SWEEP.yaml` and `mtlsweep resume DIR`: run or finish a sweep with Ray Tune."""
from __future__ import annotations

import argparse

from orchestrator.sweep import SweepOutcome


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``run`` and ``resume`` sub-commands."""
    run = subparsers.add_parser(
        "run", help="run a sweep (YAML) with Ray Tune",
        description="Validate SWEEP.yaml (and the cluster's resources), then run every trial "
                    "with Ray Tune; results go to <storage>/<name>/results/ as parquet.")
    run.add_argument("sweep", metavar="SWEEP.yaml", help="sweep spec (see sweeps/demo.yaml)")
    run.add_argument("--storage", default=None,
                     help="results root: a directory or a URI pyarrow understands "
                          "(default: the YAML's storage, else ./runs)")
    run.add_argument("--address", default=None,
                     help="Ray cluster address (default: start a local Ray on this machine)")
    run.add_argument("--name", default=None, help="sweep name (default: the YAML file stem)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run of this sweep: finished trials are kept, "
                          "interrupted ones continue from their last epoch")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything that can be checked without training (spec, "
                          "plugins, data, one batch through the model, losses, metrics, "
                          "storage), print the trial grid and exit; starts and writes nothing")
    run.set_defaults(func=_run)
    resume = subparsers.add_parser(
        "resume", help="finish an interrupted sweep",
        description="Restore the Tune experiment in DIR (= <storage>/<sweep>) and finish it; "
                    "completed trials are not rerun.")
    resume.add_argument("experiment", metavar="DIR", help="the sweep's directory")
    resume.add_argument("--address", default=None, help="Ray cluster address")
    resume.set_defaults(func=_resume)


def _run(args: argparse.Namespace) -> int:
    from orchestrator.spec import describe, load_spec
    from orchestrator.sweep import run_sweep
    spec = load_spec(args.sweep, name=args.name, storage=args.storage)
    if args.dry_run:
        from orchestrator.dryrun import dry_run
        print(dry_run(spec))
        return 0
    print(describe(spec), flush=True)
    return report(run_sweep(spec, storage=spec.storage, address=args.address,
                            resume=args.resume))


def _resume(args: argparse.Namespace) -> int:
    from orchestrator.sweep import resume_sweep
    return report(resume_sweep(args.experiment, address=args.address))


def report(outcome: SweepOutcome) -> int:
    """Print where the results are; exit code 1 when some trial failed for good."""
    print(f"{outcome.trials} trials, {outcome.errored} failed")
    if outcome.best:
        print(f"best: {outcome.best}")
    print(f"results: {outcome.results_dir}  (read with orchestrator.results.read_results, or "
          f"`mtlsweep analyze {outcome.experiment_dir}`)")
    return 1 if outcome.errored else 0
