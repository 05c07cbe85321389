"""Run, resume and describe a sweep with Ray Tune.

`run_sweep` validates the spec against the live cluster (before any trial: a GPU request on a
GPU-less cluster would otherwise stay PENDING forever), then runs a `Tuner`
(orchestrator/tuner.py, the one module that imports Ray Tune) with ``tune.with_resources`` (fractional CPU/GPU), ``reuse_actors``,
``max_concurrent_trials`` and ``FailureConfig(max_failures)``. The experiment directory is
``<storage>/<sweep>/``: Tune's own state plus ``sweep.json`` (the validated spec, so `resume`
needs only the directory) and ``results/`` (the parquet record; Tune's result.json is not).
`resume_sweep` restores with ``Tuner.restore(..., resume_errored=True)``: finished trials are
not rerun, interrupted ones continue from their last epoch checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.spec import SweepSpec, parse_spec
from orchestrator.store import filesystem, model_store_dir
from orchestrator.tuner import check_cluster, fit, init_ray, shutdown, storage_uri

SPEC_FILE = "sweep.json"
SPEC_FORMAT = 2


@dataclass
class SweepOutcome:
    """What a finished (or resumed) sweep left behind."""

    experiment_dir: str
    results_dir: str
    trials: int
    errored: int
    best: dict[str, Any] | None = None  # search sweeps: the best trial's config and metric


def run_sweep(spec: SweepSpec, *, storage: str | None = None, address: str | None = None,
              resume: bool = False) -> SweepOutcome:
    """Run ``spec`` to the end (``resume``: continue an interrupted run of it instead)."""
    # Absolute before it reaches a trial: Ray runs each trial in its own working directory,
    # where a relative path would silently scatter the results.
    storage = storage_uri(storage or spec.storage or "runs")
    spec = dataclasses.replace(spec, storage=storage)
    needs_store = bool(spec.targets) or spec.reuse_surrogates
    store_dir = model_store_dir(storage, spec.store_path) if needs_store else ""
    started = init_ray(address)
    try:
        check_cluster(spec)
        exp_dir = f"{storage.rstrip('/')}/{spec.name}"
        if not resume or not _has_spec(exp_dir):
            save_spec(spec, exp_dir)
        grid = fit(spec, storage, store_dir, exp_dir, resume)
    finally:
        if started:
            shutdown()
    return _outcome(spec, exp_dir, grid)


def resume_sweep(experiment_dir: str, *, address: str | None = None) -> SweepOutcome:
    """Resume the sweep whose experiment directory (``<storage>/<sweep>``) is given."""
    spec = load_saved_spec(experiment_dir)
    storage = _parent(experiment_dir)
    return run_sweep(spec, storage=storage, address=address, resume=True)


def _parent(path: str) -> str:
    path = path.rstrip("/")
    return path.rsplit("/", 1)[0] if "://" in path else str(Path(path).resolve().parent)


def save_spec(spec: SweepSpec, exp_dir: str) -> None:
    """Keep the sweep with its experiment, so `resume` needs only the directory: the YAML
    mapping as given (re-validated whenever it is read), its name, storage and import paths."""
    fs, root = filesystem(exp_dir)
    fs.create_dir(root, recursive=True)
    record = {"format": SPEC_FORMAT, "name": spec.name, "storage": spec.storage,
              "import_paths": list(spec.import_paths), "sweep": spec.raw}
    with fs.open_output_stream(f"{root.rstrip('/')}/{SPEC_FILE}") as out:
        out.write(json.dumps(record, indent=2, sort_keys=True).encode())


def _has_spec(exp_dir: str) -> bool:
    import pyarrow.fs as pafs
    fs, root = filesystem(exp_dir)
    return fs.get_file_info(f"{root.rstrip('/')}/{SPEC_FILE}").type == pafs.FileType.File


def load_saved_spec(experiment_dir: str) -> SweepSpec:
    """The spec a sweep was started with (``<experiment_dir>/sweep.json``), validated again.
    Import paths inside the experiment directory are not trusted (a copied directory is data,
    not code)."""
    fs, root = filesystem(experiment_dir)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{SPEC_FILE}") as src:
            data = json.loads(src.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"{experiment_dir!r} is not a sweep directory (no {SPEC_FILE}); "
                                "give <storage>/<sweep> of a sweep started by `mtlsweep run`"
                                ) from None
    if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT or \
            not isinstance(data.get("sweep"), dict):
        raise ValueError(f"{experiment_dir}/{SPEC_FILE}: not a sweep record of format "
                         f"{SPEC_FORMAT} (written by an older mtlsweep or not by mtlsweep)")
    inside = os.path.abspath(root)
    paths = tuple(p for p in data.get("import_paths", []) if isinstance(p, str)
                  and os.path.isdir(p) and not os.path.abspath(p).startswith(inside))
    return parse_spec(data["sweep"], name=data.get("name"), storage=data.get("storage"),
                      import_paths=paths)


def _outcome(spec: SweepSpec, exp_dir: str, grid: Any) -> SweepOutcome:
    errored = [r for r in grid if r.error is not None]
    for result in errored:
        print(f"mtlsweep: trial failed after {spec.max_failures} retries: {result.error}",
              file=sys.stderr)
    best = None
    if spec.search["mode"] != "grid":
        metric, goal = spec.search["metric"], spec.search["goal"]
        scored = [r for r in grid if r.metrics and r.metrics.get(metric) is not None]
        if scored:
            pick = (max if goal == "max" else min)(scored, key=lambda r: r.metrics[metric])
            best = {"metric": metric, "value": pick.metrics[metric],
                    "config": pick.config.get("axis", {})}
    return SweepOutcome(experiment_dir=exp_dir, results_dir=f"{exp_dir}/results",
                        trials=len(grid), errored=len(errored), best=best)
