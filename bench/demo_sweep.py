"""The demo sweep end to end (issue 12 item 6): wall time of each step and the trials' phase split.

Runs a sweep YAML (default ``sweeps/demo.yaml``) the way ``mtlsweep run`` does
(`orchestrator.sweep.run_sweep`, local Ray unless ``--address``) into a fresh temporary storage,
then ``mtlsweep analyze``'s analysis of it, and reports:

* ``sweep_wall_s``: the run, from spec to outcome (Ray start, the transfer targets trained into
  the model store, every trial, the consolidation at its end);
* ``trials_s``: the trials' own ``total`` seconds summed (their ``timings`` table) and
  ``parallelism`` = trials_s / sweep_wall_s (how many trials ran at once, net of overhead);
* ``phases_s`` and ``phase_share``: each phase of the trials' ``timings`` summed over trials
  (data, train, zoo = loading the targets, eval_clean / eval_whitebox / eval_cross_task /
  eval_transfer, write) and its share of the trials' total;
* ``analysis_s``: the analysis (tables, claims, plots, report);
* ``device``: what the trials ran on (a GPU's name when ``resources.gpu`` > 0 and CUDA is there,
  else ``cpu``; orchestrator/devices.py makes the same choice in each trial).

``--set PATH=VALUE`` edits the YAML before it is checked (VALUE is YAML), e.g. on one GPU:
``--set resources.gpu=0.25 --set max_concurrent=4 --set compute.autocast=bf16``.

    PYTHONPATH=. python bench/demo_sweep.py [--sweep sweeps/demo.yaml] [--set PATH=VALUE ...]
        [--address ADDR] [--keep DIR]

The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.analysis import analyze  # noqa: E402
from orchestrator.results_reading import read_results  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402

PHASES = ("data", "train", "zoo", "eval_clean", "eval_whitebox", "eval_cross_task",
          "eval_transfer", "write")


def edited(raw: dict, settings: list[str]) -> dict:
    """``raw`` with each ``a.b.c=VALUE`` applied (VALUE parsed as YAML)."""
    for setting in settings:
        path, sep, value = setting.partition("=")
        if not sep or not path:
            raise SystemExit(f"--set {setting!r}: expected PATH=VALUE, e.g. resources.gpu=0.25")
        node = raw
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SystemExit(f"--set {setting!r}: {key} is not a mapping in the YAML")
        node[last] = yaml.safe_load(value)
    return raw


def phase_split(experiment_dir: str) -> tuple[dict[str, float], float, int]:
    """(seconds per phase summed over trials, the trials' total seconds, trials counted)."""
    timings = read_results(experiment_dir, "timings").collect()
    per_phase = {p: float(timings.filter(timings["phase"] == p)["seconds"].sum())
                 for p in (*PHASES, "total")}
    return per_phase, per_phase.pop("total"), timings["trial_id"].n_unique()


def device(resources: dict) -> str:
    """The device the trials used: a GPU when they asked for one and CUDA is there."""
    if resources.get("gpu", 0) > 0 and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", default="sweeps/demo.yaml")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="PATH=VALUE", help="edit the YAML (VALUE is YAML)")
    parser.add_argument("--address", default=None, help="Ray cluster address")
    parser.add_argument("--keep", type=Path, default=None,
                        help="storage to keep the sweep in (default: a temporary directory)")
    args = parser.parse_args()
    raw = edited(yaml.safe_load(Path(args.sweep).read_text()), args.settings)
    storage = args.keep or Path(tempfile.mkdtemp(prefix="mtlsweep_demo_bench_"))
    spec = parse_spec(raw, name="bench_" + Path(args.sweep).stem, storage=str(storage))
    load_before = os.getloadavg()[0]
    try:
        start = time.perf_counter()
        outcome = run_sweep(spec, storage=str(storage), address=args.address, overwrite=True)
        sweep_wall = time.perf_counter() - start
        if outcome.errored or outcome.missing:
            raise SystemExit(f"the sweep did not finish: {outcome.failed or outcome.missing}")
        start = time.perf_counter()
        result = analyze(outcome.experiment_dir, Path(outcome.experiment_dir) / "analysis")
        analysis = time.perf_counter() - start
        phases, trials_s, counted = phase_split(outcome.experiment_dir)
    finally:
        if args.keep is None:
            shutil.rmtree(storage, ignore_errors=True)
    share = {p: round(s / trials_s, 3) if trials_s else None for p, s in phases.items()}
    print(f"{outcome.trials} trials in {sweep_wall:.1f} s of wall time ({trials_s:.1f} s of "
          f"trials, {trials_s / sweep_wall:.2f} at once); analysis {analysis:.1f} s, "
          f"{len(result.plots)} plots")
    for phase in PHASES:
        print(f"  {phase:16s} {phases[phase]:8.1f} s  {100 * (share[phase] or 0):5.1f} %")
    print(json.dumps({
        "sweep": args.sweep, "settings": args.settings, "trials": outcome.trials,
        "trials_timed": counted, "sweep_wall_s": round(sweep_wall, 2),
        "trials_s": round(trials_s, 2), "parallelism": round(trials_s / sweep_wall, 2),
        "phases_s": {p: round(s, 2) for p, s in phases.items()}, "phase_share": share,
        "analysis_s": round(analysis, 2), "resources": spec.resources,
        "max_concurrent": raw.get("max_concurrent"), "device": device(spec.resources),
        "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
