"""Per-trial device setup and up-front resource checks.

Ray only *accounts* for fractional resources: a trial granted ``cpu: 0.5`` still gets every
torch thread, and four trials granted ``gpu: 0.25`` each share one card with nothing stopping
one of them from taking all of its memory. ``setup_trial_device`` turns the trial's share into
real limits (torch threads, a CUDA memory cap) and picks the GPU Ray assigned.
``check_resources`` fails a sweep before it starts when a trial asks for something the cluster
does not have -- otherwise Tune leaves such trials PENDING forever (docs/design.md section 8).
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

import torch

# Sweep-spec spelling -> Ray's resource name. Any other key is a custom resource, used verbatim.
_RAY_NAMES = {"cpu": "CPU", "cpus": "CPU", "gpu": "GPU", "gpus": "GPU"}
# Ray keeps resources in units of 1/10000.
_PRECISION = 1e-4


def _check_amount(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field}: expected a number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field}: expected a finite number >= 0, got {value!r}")
    if 0 < value < _PRECISION:
        raise ValueError(f"{field}: {value!r} is below Ray's resource precision of 0.0001")
    return value


def _ray_gpu_ids() -> list[str]:
    """GPU ids Ray assigned to this worker, or [] when Ray is not initialised here."""
    ray = sys.modules.get("ray")  # never import ray just to ask: a plain process has none
    if ray is None or not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_gpu_ids()]


def _local_cuda_index(assigned: list[str]) -> int:
    """Index, among the GPUs torch can see, of the first GPU Ray assigned (0 if none).

    Ray normally sets CUDA_VISIBLE_DEVICES to the assigned ids, which makes the trial's GPU
    visible index 0. If visibility is left alone (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)
    the assigned id is looked up in the visible list, or used as the index when no list is set.
    """
    if not assigned:
        return 0
    gpu = assigned[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if gpu in ids:
            return ids.index(gpu)
        raise ValueError(f"gpus: Ray assigned GPU {gpu} but CUDA_VISIBLE_DEVICES={visible!r} "
                         "does not contain it")
    return int(gpu)


def setup_trial_device(cpus: float, gpus: float) -> torch.device:
    """Limit torch to the trial's CPU share and return the device the trial must use.

    ``cpus``: the trial's CPU share; torch gets ``ceil(cpus)`` threads (at least 1).
    ``gpus``: the trial's GPU share; 0 means CPU. For ``gpus > 0`` the trial's GPU is the one
    Ray assigned (``ray.get_gpu_ids()`` when Ray is initialised in this process, else ``cuda:0``
    of what is visible), made the current device, and capped at ``min(1, gpus)`` of its memory
    so trials packed onto one card cannot run each other out of memory.
    Raises ValueError for a bad share, or when ``gpus > 0`` but CUDA is unavailable.
    """
    cpus = _check_amount("cpus", cpus)
    gpus = _check_amount("gpus", gpus)
    if cpus == 0:
        raise ValueError("cpus: expected a number > 0, got 0")
    if gpus > 0 and not torch.cuda.is_available():
        raise ValueError(
            f"gpus: {gpus:g} requested but CUDA is not available in this process "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
            "set the sweep's resources to gpu: 0 or run on a node with a GPU")
    torch.set_num_threads(max(1, math.ceil(cpus)))
    if gpus == 0:
        return torch.device("cpu")
    index = _local_cuda_index(_ray_gpu_ids())
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"gpus: the assigned GPU is visible index {index}, but this process "
                         f"sees only {count} GPU(s)")
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, gpus), device)
    return device


def _ray_name(key: str) -> str:
    return _RAY_NAMES.get(key.lower(), key) if isinstance(key, str) else key


def _describe(available: Mapping[str, float]) -> str:
    shown = {k: v for k, v in available.items()
             if not (k.startswith("node:") or k in ("memory", "object_store_memory"))}
    return ", ".join(f"{k}={v:g}" for k, v in sorted(shown.items())) or "nothing"


def check_resources(request: Mapping[str, float], available: Mapping[str, float]) -> None:
    """Raise ValueError unless one trial's ``request`` fits in the cluster's ``available``.

    ``request`` uses the sweep spelling (``cpu``, ``gpu``; any other key is a custom Ray
    resource such as ``worker_node``), ``available`` is ``ray.cluster_resources()`` (``CPU``,
    ``GPU``, ...). Zero amounts are ignored; GPU amounts above 1 must be whole numbers. Called
    before a sweep starts so an impossible trial fails loudly instead of staying PENDING.
    """
    if not isinstance(request, Mapping):
        raise ValueError(f"resources: expected a mapping like {{'cpu': 1, 'gpu': 0.25}}, "
                         f"got {type(request).__name__}")
    for key, raw in request.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"resources: resource names must be non-empty strings, got {key!r}")
        amount = _check_amount(key, raw)
        name = _ray_name(key)
        if name == "GPU" and amount > 1 and not amount.is_integer():
            raise ValueError(f"{key}: {amount:g} requested; GPU amounts above 1 must be whole "
                             "numbers (a fraction shares one GPU, a whole number takes several)")
        if amount == 0:
            continue
        have = float(available.get(name, 0.0))
        if have + 1e-9 < amount:
            unit = {"CPU": " CPUs", "GPU": " GPUs"}.get(name, f" of resource {name!r}")
            raise ValueError(f"{key}: {amount:g} requested per trial, cluster has {have:g}{unit} "
                             f"(cluster resources: {_describe(available)})")
