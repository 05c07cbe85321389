"""`mtlsweep run SWEEP.yaml` and `mtlsweep resume DIR`: run or finish a sweep with Ray Tune."""
from __future__ import annotations

import argparse

from orchestrator.exits import is_disk_full
from orchestrator.sweep import SweepOutcome


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``run`` and ``resume`` sub-commands."""
    run = subparsers.add_parser(
        "run", help="run a sweep (YAML) with Ray Tune",
        description="Validate SWEEP.yaml (and the cluster's resources), then run every trial "
                    "with Ray Tune; results go to <storage>/<name>/results/ as parquet. The "
                    "directory is bound to the spec: running the same spec again runs only "
                    "the trials still missing; a different spec under the same name is "
                    "refused (see --new-name, --overwrite). Exit status: 0 when every trial "
                    "finished, 1 when some failed, 2 for bad input, 130 when interrupted.")
    run.add_argument("sweep", metavar="SWEEP.yaml", help="sweep spec (see sweeps/demo.yaml)")
    run.add_argument("--storage", default=None,
                     help="results root: a directory or a URI pyarrow understands "
                          "(default: the YAML's storage, else ./runs)")
    run.add_argument("--address", default=None,
                     help="Ray cluster address (default: start a local Ray on this machine)")
    run.add_argument("--name", default=None, help="sweep name (default: the YAML file stem)")
    run.add_argument("--resume", action="store_true",
                     help="(the default) running a sweep again continues it: finished trials "
                          "are kept, interrupted ones continue from their last epoch")
    run.add_argument("--new-name", action="store_true",
                     help="when the name holds a sweep of a different spec, run this one "
                          "beside it as <name>-2, -3, ...")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the sweep (and results) stored under this name first")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything that can be checked without training (spec, "
                          "plugins, data, one batch through the model, losses, metrics, "
                          "storage), print the trial grid and exit; starts and writes nothing")
    run.set_defaults(func=_run)
    resume = subparsers.add_parser(
        "resume", help="finish an interrupted sweep",
        description="Finish the sweep in DIR (= <storage>/<sweep>) from its record: the "
                    "trials whose results are missing run, each from its last finished epoch; "
                    "completed trials are not rerun.")
    resume.add_argument("experiment", metavar="DIR", help="the sweep's directory")
    resume.add_argument("--address", default=None, help="Ray cluster address")
    resume.set_defaults(func=_resume)


def _run(args: argparse.Namespace) -> int:
    from orchestrator.spec import describe, load_spec
    from orchestrator.sweep import run_sweep
    spec = load_spec(args.sweep, name=args.name, storage=args.storage)
    if args.new_name and args.overwrite:
        raise ValueError("--new-name and --overwrite: choose one")
    if args.dry_run:
        from orchestrator.dryrun import dry_run
        print(dry_run(spec))
        return 0
    print(describe(spec), flush=True)
    return report(run_sweep(spec, storage=spec.storage, address=args.address,
                            overwrite=args.overwrite, new_name=args.new_name))


def _resume(args: argparse.Namespace) -> int:
    from orchestrator.sweep import resume_sweep
    return report(resume_sweep(args.experiment, address=args.address))


def report(outcome: SweepOutcome) -> int:
    """Print what the record holds; exit status 0 only when every trial is done."""
    done = outcome.finished + outcome.pruned
    parts = [f"{outcome.finished} finished"] + \
        ([f"{outcome.pruned} stopped early by ASHA"] if outcome.pruned else []) + \
        ([f"{outcome.missing} not run"] if outcome.missing else []) + \
        ([f"{outcome.skipped} were done before this run"] if outcome.skipped else [])
    print(f"{outcome.trials} trials, {outcome.errored} failed ({', '.join(parts)})")
    for trial_id, reason in sorted(outcome.failed.items()):
        print(f"  failed: {trial_id}: {reason.splitlines()[0] if reason else 'no reason kept'}")
    if any(is_disk_full(r) for r in outcome.failed.values()):
        print(f"no space left on the filesystem of {outcome.experiment_dir}; free some space, "
              f"then: mtlsweep resume {outcome.experiment_dir}")
    elif outcome.failed or outcome.missing:
        print(f"to retry what is missing: mtlsweep resume {outcome.experiment_dir}")
    if outcome.best:
        print(f"best: {outcome.best}")
    print(f"results: {outcome.results_dir}  (read with orchestrator.results.read_results, or "
          f"`mtlsweep analyze {outcome.experiment_dir}`)")
    return 0 if done >= outcome.trials and not outcome.failed else 1

