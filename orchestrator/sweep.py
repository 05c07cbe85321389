"""Run and resume a sweep: the sweep record decides what runs, Ray Tune schedules it.

`run_sweep` binds the experiment directory ``<storage>/<sweep>/`` to the spec's hash
(orchestrator/record.py): a new directory records the spec; the same spec again continues it
(finished trials are skipped, interrupted ones continue from their last epoch); a different
spec under the same name is refused, naming the fields that differ (``overwrite`` replaces the
old sweep, ``new_name`` runs beside it). One run per directory at a time (a lock). Only then
does Ray start: the cluster is checked against one trial's request, and a fresh `Tuner` runs the
trials still missing. The outcome comes from the record, so the exit code tells the truth:
every trial finished, some failed (named, with their reasons) or the run was interrupted.
`resume_sweep` needs only the directory: it re-validates ``sweep.json`` and runs the rest.
A run that ran trials ends by writing the analysis's consolidated copy of the results
(orchestrator/analysis_tables.consolidate; the per-trial files stay the record), so the first
`mtlsweep analyze` of a 10,000-trial sweep reads three files instead of 30,000.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from orchestrator import record
from orchestrator.analysis_tables import consolidate
from orchestrator.record import RecordError
from orchestrator.results_reading import ResultsWarning, scan_results
from orchestrator.spec import DEFAULT_STORAGE, SpecError, SweepSpec, parse_spec
from orchestrator.exits import StopRequest, SweepInterrupted
from orchestrator.fs import filesystem
from orchestrator.store import model_store_dir
from orchestrator.sweep_lock import sweep_lock
from orchestrator.trial import trial_configs
from orchestrator.tuner import check_cluster, fit, init_ray, show_columns, shutdown, storage_uri

SPEC_FILE = record.SPEC_FILE


@dataclass
class SweepOutcome:
    """What a sweep's record holds after a run (or resume)."""

    experiment_dir: str
    results_dir: str
    trials: int                         # trials the sweep has (grid) or samples it draws
    finished: int = 0
    failed: dict[str, str] = field(default_factory=dict)   # trial_id -> reason
    pruned: int = 0
    skipped: int = 0                    # already done before this run started
    best: dict[str, Any] | None = None  # search sweeps: the best trial's config and metric

    @property
    def errored(self) -> int:
        return len(self.failed)

    @property
    def missing(self) -> int:
        return max(self.trials - self.finished - self.pruned - len(self.failed), 0)


def run_sweep(spec: SweepSpec, *, storage: str | None = None, address: str | None = None,
              overwrite: bool = False, new_name: bool = False, replace_changed: bool = False
              ) -> SweepOutcome:
    """Run ``spec``'s missing trials to the end (see the module docstring). ``overwrite``
    deletes the directory's old sweep first; ``replace_changed`` only when its spec differs
    (the demo's rule); ``new_name`` picks ``<name>-N`` when the name holds another spec."""
    # Absolute before it reaches a trial: Ray runs each trial in its own working directory,
    # where a relative path would silently scatter the results.
    storage = storage_uri(storage or spec.storage or DEFAULT_STORAGE)
    spec = dataclasses.replace(spec, storage=storage)
    if new_name:
        spec = dataclasses.replace(spec, name=free_name(spec, storage))
    exp_dir = f"{storage.rstrip('/')}/{spec.name}"
    needs_store = bool(spec.targets) or spec.reuse_surrogates
    store_dir = model_store_dir(storage, spec.store_path) if needs_store else ""
    with sweep_lock(exp_dir):
        claim(spec, exp_dir, overwrite, replace_changed)
        done = _done(exp_dir)
        if spec.search["mode"] != "grid":  # unfinished samples are drawn afresh, not resumed
            for trial_id in set(record.trial_ids(exp_dir)) - done:
                record.delete_dir(record.trial_dir(exp_dir, trial_id))
        points = _points(spec, done) if spec.search["mode"] == "grid" else None
        total = _planned(spec)
        todo = len(points) if points is not None else max(total - len(done), 0)
        if todo:
            print(f"mtlsweep: {len(done)} of {total} trials already done; running {todo}"
                  if done else f"mtlsweep: running {todo} trials", file=sys.stderr, flush=True)
            run = {"storage": storage, "store_dir": store_dir, "exp_dir": exp_dir}
            grid = _fit(spec, exp_dir, address, run, points, todo, len(done))
            _mark_pruned(spec, exp_dir, grid)
            _consolidate(exp_dir)
        else:
            grid = []
        return _outcome(spec, exp_dir, total, len(done), grid)


def resume_sweep(experiment_dir: str, *, address: str | None = None) -> SweepOutcome:
    """Finish the sweep whose directory (``<storage>/<sweep>``) is given, from its record."""
    spec = load_saved_spec(experiment_dir)
    return run_sweep(spec, storage=_parent(experiment_dir), address=address)


def load_saved_spec(experiment_dir: str) -> SweepSpec:
    """The spec a sweep was started with (``<experiment_dir>/sweep.json``), validated again.
    Import paths inside the experiment directory are not trusted (a copied directory is data,
    not code); the storage is where the directory is, whatever the file says."""
    experiment_dir = experiment_dir.rstrip("/")
    data = record.load_spec_record(experiment_dir)
    if data is None:
        raise FileNotFoundError(f"{experiment_dir!r} is not a sweep directory (no {SPEC_FILE}); "
                                "give <storage>/<sweep> of a sweep started by `mtlsweep run`")
    fs, root = filesystem(experiment_dir)
    inside = os.path.abspath(root)
    paths = tuple(p for p in data["import_paths"] if os.path.isdir(p)
                  and not os.path.abspath(p).startswith(inside))
    try:
        return parse_spec(data["sweep"], name=data["name"], storage=_parent(experiment_dir),
                          import_paths=paths)
    except SpecError as err:
        raise SpecError(f"{experiment_dir}/{SPEC_FILE}: {err}") from None


def _parent(path: str) -> str:
    path = path.rstrip("/")
    return path.rsplit("/", 1)[0] if "://" in path else os.path.dirname(os.path.abspath(path))


def free_name(spec: SweepSpec, storage: str) -> str:
    """``spec.name``, or ``<name>-2``, ``-3``... : the first whose directory is free or holds
    this very spec (so a rerun with --new-name continues the copy it made before)."""
    mine = record.spec_hash(spec.raw)
    for i in range(1, 10_000):
        name = spec.name if i == 1 else f"{spec.name}-{i}"
        try:
            data = record.load_spec_record(f"{storage.rstrip('/')}/{name}")
        except RecordError:
            continue
        if data is None and not record.exists(f"{storage.rstrip('/')}/{name}"):
            return name
        if data is not None and data["spec_hash"] == mine:
            return name
    raise SpecError(f"name: no free name {spec.name}-N under {storage}")


def claim(spec: SweepSpec, exp_dir: str, overwrite: bool, replace_changed: bool = False
          ) -> None:
    """Bind ``exp_dir`` to ``spec``: record a new sweep, accept the same spec, refuse a
    different one (or replace it: ``overwrite`` always, ``replace_changed`` when it differs).
    Leftover temp files are removed."""
    try:
        old = record.load_spec_record(exp_dir)
        damaged = ""
    except RecordError as err:
        old, damaged = None, str(err)
    if old is not None and old["spec_hash"] == record.spec_hash(spec.raw) and not overwrite:
        _clean_temp(exp_dir)
        return
    occupied = damaged or old is not None or _has_content(exp_dir)
    if occupied and not (overwrite or replace_changed):
        why = (f"it holds a different sweep ({'; '.join(record.spec_differences(old['sweep'], spec.raw))})"
               if old is not None else damaged or "it is not empty and holds no sweep record")
        raise SpecError(f"name: {exp_dir} is taken: {why}. Use --new-name to run this spec "
                        "beside it, or --overwrite to delete the old sweep and its results")
    if occupied:
        print(f"mtlsweep: replacing the sweep in {exp_dir}", file=sys.stderr)
        _delete_contents(exp_dir)
    save_spec(spec, exp_dir)


def save_spec(spec: SweepSpec, exp_dir: str) -> None:
    """Record ``spec`` as the sweep of ``exp_dir`` (``sweep.json``, with its hash)."""
    record.save_spec_record(exp_dir, record.spec_record(spec.name, spec.raw, spec.import_paths))


def _has_content(exp_dir: str) -> bool:
    fs, root = filesystem(exp_dir)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return any(f.base_name != ".lock" for f in found)


def _delete_contents(exp_dir: str) -> None:
    """Everything in the directory but the lock we hold."""
    fs, root = filesystem(exp_dir)
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.base_name == ".lock":
            continue
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)


def _clean_temp(exp_dir: str) -> None:
    """Temp files a killed run left (results, record and state writes use ``*.tmp-*``)."""
    fs, root = filesystem(exp_dir)
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    for info in found:
        if info.type == pafs.FileType.File and ".tmp-" in info.base_name:
            fs.delete_file(info.path)


def _done(exp_dir: str) -> set[str]:
    """Trials the record marks finished (with their rows still present and readable: a
    corrupt or copied results file does not count) or pruned."""
    states = record.statuses(exp_dir)
    if not any(s["status"] == "finished" for s in states.values()):
        return {t for t, s in states.items() if s["status"] == "pruned"}
    readable = {f.trial_id for f in scan_results(exp_dir, "timings").files}
    return {t for t, s in states.items()
            if s["status"] == "pruned" or (s["status"] == "finished" and t in readable)}


def _planned(spec: SweepSpec) -> int:
    if spec.search["mode"] == "grid":
        return spec.num_grid_trials()
    return spec.search["num_samples"] * spec.num_grid_trials()


def _points(spec: SweepSpec, done: set[str]) -> list[dict]:
    """The grid's trials still to run, each with readable values for the progress table."""
    columns = show_columns(spec)
    points = []
    for trial in trial_configs(spec):
        if trial["trial_id"] in done:
            continue
        show = {c: _readable(trial, c) for c in columns}
        points.append({"trial_id": trial["trial_id"], "axis": trial["axis_values"],
                       "show": show})
    return points


def _readable(trial: dict, path: str) -> str:
    """A short text for the progress table: the layout's branch point, the AT label, or the
    value itself (cut at 30 characters)."""
    labels = trial["labels"]
    if path == "model.layout":
        bp = labels["branch_point"]
        return f"bp{bp}" if bp is not None else str(labels["layout"])
    if path == "adv_train":
        return labels["adv_train"]
    text = str(trial["axis_values"].get(path))
    return text if len(text) <= 30 else text[:27] + "..."


@contextmanager
def _stop_on_signals(exp_dir: str) -> Iterator[StopRequest]:
    """Ctrl-C or SIGTERM sets the yielded request, which makes Tune stop its trials and return
    (its Stopper, orchestrator/tuner.py); the block then raises SweepInterrupted from plain
    Python. The handler never raises itself: an exception raised inside Ray's C code turns
    into a SystemError traceback. Later signals change nothing."""
    request = StopRequest()

    def stop(signum: int, frame: Any) -> None:
        if not request.is_set():
            print("mtlsweep: stopping; finished epochs are kept in the sweep record",
                  file=sys.stderr, flush=True)
        request.set(signum)

    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield request
        if request.is_set():
            raise SweepInterrupted(exp_dir, request.signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fit(spec: SweepSpec, exp_dir: str, address: str | None, run: dict,
         points: list[dict] | None, todo: int, done: int) -> Any:
    with _stop_on_signals(exp_dir) as stopping:
        started = init_ray(address)
        try:
            check_cluster(spec)
            if stopping.is_set():
                return []
            return fit(spec, run, points, num_samples=None if points is not None else todo,
                       seed_offset=done, stop=stopping)
        finally:
            if started:
                shutdown()


def _mark_pruned(spec: SweepSpec, exp_dir: str, grid: Any) -> None:
    """Trials ASHA stopped early end without an error and without their final evaluation:
    the record marks them pruned, so a resume does not run them again."""
    if spec.search["mode"] == "grid" or spec.search["scheduler"]["name"] != "asha":
        return
    states = record.statuses(exp_dir)
    for result in grid:
        trial_id = os.path.basename(str(result.path).rstrip("/"))
        if result.error is None and trial_id not in states and \
                not (result.metrics or {}).get("evaluated"):
            record.set_status(exp_dir, trial_id, "pruned", "stopped early by ASHA")


def _consolidate(exp_dir: str) -> None:
    """Write the analysis's copy of the results now (best effort: a failure only costs the
    first analysis a full read, so it is one warning line, never a failed sweep)."""
    start = time.perf_counter()
    print("mtlsweep: consolidating the results for analysis ...", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings():  # skipped files are named by the analysis itself
            warnings.simplefilter("ignore", ResultsWarning)
            written = consolidate(exp_dir)
    except Exception as err:  # noqa: BLE001 - derived data; the per-trial files are the record
        print(f"mtlsweep: warning: the results' consolidated copy was not written "
              f"({type(err).__name__}: {err}); mtlsweep analyze will read every trial's files",
              file=sys.stderr, flush=True)
        return
    print(f"mtlsweep: results consolidated in {time.perf_counter() - start:.1f} s" if written
          else "mtlsweep: results not consolidated (no results yet, or the sweep directory is "
               "not writable)", file=sys.stderr, flush=True)


def _outcome(spec: SweepSpec, exp_dir: str, total: int, skipped: int, grid: Any
             ) -> SweepOutcome:
    states = record.statuses(exp_dir)
    done = _done(exp_dir)
    failed = {t: s["reason"] for t, s in states.items()
              if s["status"] == "failed" and t not in done}
    for result in grid:  # an error whose status could not be written (e.g. a full disk)
        trial_id = os.path.basename(str(result.path).rstrip("/"))
        if result.error is not None and trial_id not in done:
            cause = getattr(result.error, "cause", None) or result.error  # Ray's wrapper
            failed.setdefault(trial_id, f"{type(cause).__name__}: {cause}")
    outcome = SweepOutcome(
        experiment_dir=exp_dir, results_dir=f"{exp_dir}/results", trials=total,
        finished=sum(states[t]["status"] == "finished" for t in done),
        pruned=sum(states[t]["status"] == "pruned" for t in done), failed=failed,
        skipped=skipped)
    if spec.search["mode"] != "grid":
        metric, goal = spec.search["metric"], spec.search["goal"]
        scored = [r for r in grid if r.metrics and r.metrics.get(metric) is not None]
        if scored:
            pick = (max if goal == "max" else min)(scored, key=lambda r: r.metrics[metric])
            outcome.best = {"metric": metric, "value": pick.metrics[metric],
                            "config": pick.config.get("axis", {})}
    return outcome

