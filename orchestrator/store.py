"""The orchestrator's view of the model store: the target zoo, stored surrogates, run records.

`parse_targets` reads the sweep's ``transfer`` section (the zoo spec) into full model configs
(`mtl.config.run.RunConfig.model_key`); their hashes key the store.

Models live in ``<storage>/models/<hash>/`` (mtl.train.zoo: checkpoints, config.json, COMPLETE,
an fcntl lock per hash). The store needs a POSIX filesystem every trial can reach: a local
directory for one machine, a shared filesystem (NFS, Lustre, EFS, ...) mounted at the same path
on every node of a cluster. When results go to an object store (``s3://...``), give the sweep a
``store.path`` on a shared filesystem; without one a sweep that needs the store (transfer
targets or ``store.reuse_surrogates``) is refused up front.

Attempt numbers are counted per trial under ``<storage>/<sweep>/attempts/<trial_id>`` (one
marker per attempt, through pyarrow's filesystems, so URIs work too): the results record which
attempt wrote them.
"""
from __future__ import annotations

import itertools
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import torch

from mtl.config.paths import reroot
from mtl.config.reading import ConfigError, Node, as_list, fail
from mtl.config.run import parse_run_config
from mtl.models.layout import Layout
from mtl.train import zoo
from orchestrator.axes import with_values
from orchestrator.fs import filesystem, local_path

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec


def model_store_dir(storage: str, store_path: str | None = None) -> str:
    """Where the sweep's models live: ``store_path`` if given, else ``<storage>/models``."""
    if store_path is not None:
        return os.path.abspath(store_path)
    local = local_path(storage)
    if local is None:
        raise ValueError(f"store.path: storage {storage!r} is not a local or shared filesystem, "
                         "so the model store cannot live under it; set store.path in the sweep "
                         "to a directory on a filesystem every node mounts")
    return os.path.join(local, "models")


def load_targets(targets: Sequence[Mapping], store_dir: str, device: torch.device,
                 dataset: Any) -> dict[str, torch.nn.Module]:
    """Train (once, under the store's locks) or reuse every transfer target; target id ->
    model in eval mode on ``device``, at its last kept epoch (heads sized by ``dataset``)."""
    entries = zoo.ensure_models([t["config"] for t in targets], store_dir, device=device)
    return {t["id"]: zoo.load_model(entries[t["id"]], t["config"], dataset, device=device)
            for t in targets}


def find_surrogate(config: Mapping, store_dir: str) -> Path | None:
    """A complete store entry with this trial's training config, if an earlier trial left one."""
    return zoo.find_model(config, store_dir)


def publish_surrogate(config: Mapping, checkpoint_dir: str, store_dir: str) -> Path:
    """Offer a trial's kept checkpoints to later trials with the same training config."""
    return zoo.publish_model(config, checkpoint_dir, store_dir)


def next_attempt(storage: str, sweep: str, trial_id: str) -> int:
    """Record one more attempt of ``trial_id`` and return its number (1 for the first)."""
    fs, root = filesystem(storage)
    directory = f"{root.rstrip('/')}/{sweep}/attempts/{trial_id}"
    fs.create_dir(directory, recursive=True)
    seen = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    attempt = len([f for f in seen if f.type == pafs.FileType.File]) + 1
    with fs.open_output_stream(f"{directory}/{attempt:04d}-{uuid.uuid4().hex[:8]}"):
        pass
    return attempt


TARGET_KEYS = ("layout", "seed", "adv_train", "rho", "optimizer", "epochs")
MAX_TARGETS = 1_000
"""Transfer targets of one sweep: each is a model trained into the store and scored on every
attack of every kept epoch of every trial, and list values in an entry multiply."""
# A target entry's key -> the run-config path it sets.
_TARGET_PATHS = {"layout": "model.layout", "seed": "training.seed", "adv_train": "adv_train",
                 "rho": "training.rho", "optimizer": "training.optimizer",
                 "epochs": "training.epochs"}


def parse_targets(raw: Any, spec: "SweepSpec") -> tuple[dict, ...]:
    """`transfer.targets`: target model configs, each the sweep's base run config with the
    entry's settings written in (and one kept epoch, its last); a list value in an entry
    expands to the product (``{layout: [1, 4], seed: [1, 2]}`` = four targets)."""
    if raw is None:
        return ()
    node = Node(raw, "transfer", ("targets",))
    firsts = {a.path: a.values[0] for a in spec.axes}
    defaults = {"optimizer": spec.optimizers[0], "epochs": spec.training["epochs"],
                "seed": 0, "rho": 0.0, "adv_train": "none"}
    out: list[dict] = []
    for i, entry in enumerate(as_list(node.get("targets", []), "transfer.targets", False)):
        path = f"transfer.targets[{i}]"
        e = Node(entry, path, TARGET_KEYS)
        lists = {key: as_list(e.get(key, defaults.get(key)), f"{path}.{key}")
                 for key in TARGET_KEYS if key in e.value or key in defaults}
        count = len(out) + math.prod(len(v) for v in lists.values())
        if count > MAX_TARGETS:
            fail(path, f"{count} transfer targets so far (list values multiply); allowed: at "
                 f"most {MAX_TARGETS}")
        for combo in itertools.product(*lists.values()):
            values = dict(zip(lists, combo))
            overrides = {"model.layout": None,  # default: the model's own (fully shared)
                         **{_TARGET_PATHS[k]: v for k, v in values.items()}, "sharpness": None}
            if isinstance(values["epochs"], int) and not isinstance(values["epochs"], bool):
                overrides["training.keep_epochs"] = [values["epochs"]]  # its last epoch only
            # with_values drops the LR milestones past the target's epochs
            raw_run = with_values(spec.base, {**firsts, **overrides})
            try:
                run = parse_run_config(raw_run)
            except ConfigError as err:
                key = next((k for k, p in _TARGET_PATHS.items() if str(err).startswith(p)), None)
                raise (reroot(err, _TARGET_PATHS[key], f"{path}.{key}") if key
                       else reroot(err, "", path)) from None
            config = run.model_key()
            label = (f"{_layout_label(run.model['layout'])}-s{run.training['seed']}-"
                     f"{run.adv_label}-rho{run.training['rho']:g}-{run.training['optimizer']}"
                     f"-e{run.training['epochs']}")
            if any(t["id"] == zoo.config_hash(config) for t in out):
                fail(path, f"target {label} duplicates an earlier target")
            out.append({"id": zoo.config_hash(config), "label": label, "config": config})
    return tuple(out)


def _layout_label(layout: str | None) -> str:
    if layout is None:
        return "model"
    k = Layout.parse(layout).branch_point_of()
    return f"bp{k}" if k is not None else layout
