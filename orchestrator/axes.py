"""Sweep axes: any run-configuration field, named by its dotted path, with a list of values.

``axes: {training.lr: [0.01, 0.003], model.width: [8, 16]}`` sweeps those fields; the legacy
spellings (``layouts: [...]``, ``adv_train: [...]``, lists in ``training.optimizer``,
``training.rho`` and ``training.seeds``) are read into the same `Axis` values. Each value is
checked by mtl's own rules (`parse_run_config` on the base with that value written in), and
an error is reported where the user wrote the value (``axes.training.lr[1]: ...``).
Every axis declared under ``axes`` becomes a results column named by its path.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mtl.config.paths import get_path, pop_path, reroot, set_path
from mtl.config.reading import ConfigError, as_list, brief, check_unique, fail
from mtl.config.run import RUN_KEYS, RunConfig, parse_run_config
from orchestrator.results_schema import TABLES, columns

# Legacy list spellings: (where the list is written, the field one trial gets).
LEGACY = (("adv_train", "adv_train"), ("training.optimizer", "training.optimizer"),
          ("training.rho", "training.rho"), ("training.seeds", "training.seed"))
# Sweeping more than this many combinations checks each value alone, not every combination.
FULL_CHECK_LIMIT = 512


@dataclass(frozen=True)
class Axis:
    """One swept field: its dotted ``path`` in the run config, its ``values``, where the user
    wrote it (``source``, for messages) and its results column (None: a core column has it)."""

    path: str
    values: tuple
    source: str
    column: str | None = None


def legacy_axes(raw: dict, layouts: Sequence[str] | None) -> tuple[dict, list[Axis]]:
    """(the run-config mapping without the legacy axis lists, those axes); ``layouts`` are
    the canonical strings of the sweep's ``layouts`` list, if it has one."""
    base = {k: v for k, v in raw.items() if k in RUN_KEYS}
    axes: list[Axis] = []
    if layouts is not None:
        if get_path(base, "model.layout", None) is not None:
            fail("model.layout", "given next to layouts, which would replace it; allowed: "
                 "model.layout (one layout) or layouts (an axis), not both")
        axes.append(Axis("model.layout", tuple(layouts), "layouts"))
    for source, path in LEGACY:
        value = get_path(base, source, None)
        # seeds are always an axis (a scalar is one seed); the others only when a list
        if value is None or (not isinstance(value, list) and source != "training.seeds"):
            continue
        if source == "training.seeds" and get_path(base, "training.seed", None) is not None:
            fail("training.seed", "given next to training.seeds, which would replace it; "
                 "allowed: seed (one seed) or seeds (an axis), not both")
        values = as_list(value, source)
        check_unique(values, source)
        pop_path(base, source)
        axes.append(Axis(path, tuple(values), source))
    return base, axes


def parse_axes(raw: Any, base: Mapping, legacy: Sequence[Axis]) -> list[Axis]:
    """``axes: {dotted.path: [values]}``; a path must name a run-config field."""
    if not isinstance(raw, Mapping):
        fail("axes", f"expected a mapping dotted.path -> list of values, got {brief(raw)}")
    taken = {a.path: a.source for a in legacy}
    out = []
    for path, values in raw.items():
        where = f"axes.{brief(path, plain=True)}"
        if not isinstance(path, str) or path.split(".")[0] not in RUN_KEYS or \
                not all(path.split(".")):
            fail(where, f"not a config field; an axis is the dotted path of a run-config "
                 f"field, starting with one of {', '.join(RUN_KEYS)} (e.g. training.lr)")
        if path in taken:
            fail(where, f"{path} is already swept by {taken[path]}")
        items = as_list(values, where)
        check_unique(items, where)
        out.append(Axis(path, tuple(items), where, None if path == "adv_train" else
                        column_name(path)))
        taken[path] = where
    return out


_CORE_COLUMNS = frozenset(name for table in TABLES for name, _, _ in columns(table))


def column_name(path: str) -> str:
    """An axis' results column: its dotted path, or ``<path>.json`` where the path is a core
    column's name (a whole ``model`` or ``dataset`` section swept as one value)."""
    return f"{path}.json" if path in _CORE_COLUMNS else path


def with_values(base: Mapping, values: Mapping[str, Any]) -> dict:
    """The run-config mapping of one trial: ``base`` with each axis value at its path.

    A swept ``training.epochs`` keeps the kept epochs and LR milestones that fit and always
    keeps the last epoch (early-stopping checkpoints of a shorter run)."""
    raw = dict(base)
    for path, value in values.items():
        raw = set_path(raw, path, value)
    epochs = values.get("training.epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and \
            isinstance(raw.get("training"), Mapping):
        training = dict(raw["training"])
        keep = training.get("keep_epochs", [epochs])
        keep = keep if isinstance(keep, list) else [keep]
        training["keep_epochs"] = sorted({k for k in keep if _fits(k, epochs)} | {epochs})
        miles = training.get("milestones", [])
        miles = miles if isinstance(miles, list) else [miles]
        training["milestones"] = [m for m in miles if _fits(m, epochs)]
        raw["training"] = training
    return raw


def _fits(epoch: Any, epochs: int) -> bool:
    return not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= epochs


def check_value(base: Mapping, axis: Axis, index: int, others: Mapping[str, Any],
                memo: dict | None = None) -> RunConfig:
    """Parse the run config with ``axis`` at its ``index``-th value; errors name the value.
    ``memo``: see `parse_run_config` (sections the value does not touch are not re-read)."""
    raw = with_values(base, {**others, axis.path: axis.values[index]})
    try:
        return parse_run_config(raw, memo)
    except ConfigError as err:
        text = str(err)
        if text.startswith(axis.path.split(".")[0]) and not (
                text.startswith(axis.path + ":") or text.startswith(axis.path + ".")
                or text.startswith(axis.path + "[")):
            raise ConfigError(f"{axis.source}[{index}]: with {axis.path} = "
                              f"{brief(axis.values[index])}: {text}") from None
        raise reroot(err, axis.path, f"{axis.source}[{index}]") from None


def validate_axes(base: Mapping, axes: Sequence[Axis], search: Mapping) -> RunConfig:
    """Check every axis value (and every combination, while there are few) and every
    searched bound; returns the run config with each axis at its first value."""
    firsts = {a.path: a.values[0] for a in axes}
    for path, dist in search.get("space", {}).items():
        firsts.setdefault(path, dist["values"][0])
    memo: dict = {}
    try:
        run = parse_run_config(with_values(base, firsts), memo)
    except ConfigError as err:
        bad = next((a for a in axes if str(err).startswith(a.path)), None)
        if bad is None:
            raise
        raise reroot(err, bad.path, f"{bad.source}[0]") from None
    for axis in axes:
        if axis.path == "model.layout" and axis.source == "layouts":
            continue  # read against the model's blocks already; 7,556 trees need no re-parse
        for i in range(1, len(axis.values)):
            check_value(base, axis, i, firsts, memo)
    for path, dist in search.get("space", {}).items():
        probe = Axis(path, tuple(dist["values"]), f"search.space.{path}.{dist['kind']}")
        for i in range(len(probe.values)):
            check_value(base, probe, i, firsts, memo)
    small = [a for a in axes if a.source != "layouts"]
    if 1 < math.prod(len(a.values) for a in small) <= FULL_CHECK_LIMIT:
        for combo in itertools.product(*(a.values for a in small)):
            values = dict(zip((a.path for a in small), combo))
            try:
                parse_run_config(with_values(base, {**firsts, **values}), memo)
            except ConfigError as err:
                shown = ", ".join(f"{p} = {brief(v)}" for p, v in values.items())
                raise ConfigError(f"axes: the combination {shown} is invalid: {err}") from None
    return run


def column_value(value: Any) -> Any:
    """An axis value as a results cell: scalars as they are, anything else as sorted JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def trial_count(axes: Sequence[Axis], search: Mapping) -> tuple[int, str]:
    """(trials of the sweep, how that count is made: ``layouts 2 x training.rho 3``),
    from the axes' lengths alone (nothing is listed): a grid is the product of its axes, a
    search draws ``num_samples`` points per grid point."""
    factors = [(a.source, len(a.values)) for a in axes]
    if search.get("mode", "grid") != "grid":
        factors.append(("search.num_samples", int(search["num_samples"])))
    total = math.prod(n for _, n in factors)
    shown = " x ".join(f"{source} {n}" for source, n in factors) or "no axes"
    return total, shown


def check_trial_count(axes: Sequence[Axis], search: Mapping, max_trials: int,
                      raise_with: str) -> int:
    """The number of trials, refused when over ``max_trials`` with the count per axis and
    ``raise_with`` (how to allow more); the message names the axis with the most values."""
    total, how = trial_count(axes, search)
    if total > max_trials:
        factors = [(len(a.values), a.source) for a in axes]
        if search.get("mode", "grid") != "grid":
            factors.append((int(search["num_samples"]), "search.num_samples"))
        largest = max(factors, key=lambda f: f[0])[1]
        fail(largest, f"the sweep has {total} trials ({how}), more than max_trials = "
             f"{max_trials}; allowed: at most {max_trials} ({raise_with})")
    return total
