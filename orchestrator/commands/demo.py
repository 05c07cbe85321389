"""`mtlsweep demo --storage DIR`: the demo sweep, then its analysis, on this machine."""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO_SWEEP = Path(__file__).resolve().parents[2] / "sweeps" / "demo.yaml"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo", help="run sweeps/demo.yaml and analyse it (a few minutes on a laptop)",
        description="Run the demo sweep (every axis at toy scale) with a local Ray, then write "
                    "report.md and plots and print the summary table.")
    parser.add_argument("--storage", default="runs", help="results root (default: ./runs)")
    parser.add_argument("--sweep", default=str(DEMO_SWEEP), metavar="SWEEP.yaml",
                        help="run this sweep instead of sweeps/demo.yaml")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.analysis import analyze
    from orchestrator.commands.analyze import print_summary
    from orchestrator.commands.run import report
    from orchestrator.spec import describe, load_spec
    from orchestrator.sweep import run_sweep
    spec = load_spec(args.sweep, storage=args.storage)
    print(describe(spec), flush=True)
    # the demo's directory follows the demo: an unchanged one continues, a changed one is redone
    outcome = run_sweep(spec, storage=spec.storage, address=args.address, replace_changed=True)
    code = report(outcome)
    analysis = analyze(outcome.experiment_dir, Path(outcome.experiment_dir) / "analysis")
    print_summary(analysis.summary)
    print(f"results: {outcome.results_dir}")
    print(f"report:  {analysis.report}  ({len(analysis.plots)} plots)")
    return code
