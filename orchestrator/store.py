"""The orchestrator's view of the model store: the target zoo, stored surrogates, run records.

`parse_targets` reads the sweep's ``transfer`` section (the zoo spec) into full model configs;
their hashes key the store.

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
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from mtl.models import Layout
from mtl.train import zoo
from orchestrator.spec import (NUM_BLOCKS, OPTIMIZERS, SweepSpec, adv_label, check_train_config,
                               parse_adv, parse_layout)
from orchestrator.yamlpath import Node, as_choice, as_float, as_int, as_list, fail


def _local_path(storage: str) -> str | None:
    """The local path of ``storage`` (a path or file:// URI), or None for a remote URI."""
    if "://" not in storage:
        return os.path.abspath(storage)
    scheme, rest = storage.split("://", 1)
    return rest if scheme == "file" else None  # no network call to classify a URI


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI pyarrow understands."""
    local = _local_path(path)
    if local is not None:
        return pafs.LocalFileSystem(), local
    return pafs.FileSystem.from_uri(path)


def model_store_dir(storage: str, store_path: str | None = None) -> str:
    """Where the sweep's models live: ``store_path`` if given, else ``<storage>/models``."""
    if store_path is not None:
        return os.path.abspath(store_path)
    local = _local_path(storage)
    if local is None:
        raise ValueError(f"store.path: storage {storage!r} is not a local or shared filesystem, "
                         "so the model store cannot live under it; set store.path in the sweep "
                         "to a directory on a filesystem every node mounts")
    return os.path.join(local, "models")


def load_targets(targets: Sequence[Mapping], store_dir: str, device: torch.device
                 ) -> dict[str, torch.nn.Module]:
    """Train (once, under the store's locks) or reuse every transfer target; target id ->
    model in eval mode on ``device``, at its last kept epoch."""
    entries = zoo.ensure_models([t["config"] for t in targets], store_dir, device=device)
    return {t["id"]: zoo.load_model(entries[t["id"]], device=device)[0] for t in targets}


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


def parse_targets(raw: Any, spec: SweepSpec) -> tuple[dict, ...]:
    """`transfer.targets`: target model configs; a list value in an entry expands to the
    product (``{layout: [1, 4], seed: [1, 2]}`` = four targets)."""
    from orchestrator.trial import trial_train_config
    if raw is None:
        return ()
    node = Node(raw, "transfer", ("targets",))
    out: list[dict] = []
    for i, entry in enumerate(as_list(node.get("targets", []), "transfer.targets", False)):
        path = f"transfer.targets[{i}]"
        e = Node(entry, path, TARGET_KEYS)
        layouts = [parse_layout(x, f"{path}.layout", len(spec.tasks))
                   for x in as_list(e.get("layout", NUM_BLOCKS), f"{path}.layout")]
        seeds = [as_int(s, f"{path}.seed", 0) for s in as_list(e.get("seed", 0), f"{path}.seed")]
        advs = [parse_adv(a, f"{path}.adv_train", spec.tasks)
                for a in as_list(e.get("adv_train", "none"), f"{path}.adv_train")]
        rhos = [as_float(r, f"{path}.rho", 0.0) for r in as_list(e.get("rho", 0.0), f"{path}.rho")]
        opt = as_choice(e.get("optimizer", spec.optimizers[0]), f"{path}.optimizer", OPTIMIZERS,
                        "optimizer")
        epochs = as_int(e.get("epochs", spec.training["epochs"]), f"{path}.epochs", 1, 10_000)
        for layout, seed, adv, rho in itertools.product(layouts, seeds, advs, rhos):
            train = trial_train_config({**spec.training, "keep_epochs": [epochs]}, None,
                                       epochs=epochs, optimizer=opt, rho=rho, seed=seed, adv=adv)
            check_train_config(train, path)
            config = model_config(spec.dataset, spec.tasks, spec.width, layout, train)
            label = f"{_layout_label(layout)}-s{seed}-{adv_label(adv)}-rho{rho:g}-{opt}-e{epochs}"
            if any(t["id"] == zoo.config_hash(config) for t in out):
                fail(path, f"target {label} duplicates an earlier target")
            out.append({"id": zoo.config_hash(config), "label": label, "config": config})
    return tuple(out)


def _layout_label(layout: str) -> str:
    k = Layout.parse(layout).branch_point_of()
    return f"bp{k}" if k is not None else layout


def model_config(dataset: Mapping, tasks: Sequence[str], width: int, layout: str,
                 train: Mapping) -> dict:
    """The full training config of one model: what the model store hashes and trains from
    (validation/test sizes do not change the model, so they are left out)."""
    return {"dataset": {k: v for k, v in dataset.items() if k not in ("val", "test")},
            "model": {"layout": layout, "tasks": list(tasks), "width": width},
            "train": dict(train)}
