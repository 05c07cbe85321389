"""ImageNet ResNet-34 weights from a local torchvision-format file, copied into every branch.

TreeMTL and the DGBA paper start their Deeplab-ResNet-34 trees from ImageNet weights; here the
user names a local file (``model.pretrained: /path/resnet34.pth``), a torchvision ResNet-34
``state_dict`` (keys ``conv1.weight``, ``bn1.*``, ``layer<s>.<u>.conv1.weight``, ...,
``fc.*``). Nothing is downloaded. The file is read with ``torch.load(weights_only=True)`` and
must hold every backbone tensor with the right shape; ``fc.*`` (the ImageNet classifier) is
ignored and ``num_batches_tracked`` may be absent (older torchvision files lack it). Every copy
of a fine block (one per task group of the layout) gets the same weights.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mtl.models.deeplab_blocks import FineBlock

IGNORED_PREFIXES = ("fc.",)
OPTIONAL_SUFFIX = "num_batches_tracked"


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The mapping name -> tensor in ``path`` (weights only; one ValueError naming the file
    for anything else)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pretrained: {p} is not a file (a torchvision ResNet-34 state_dict)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or truncated files
        raise ValueError(f"pretrained: cannot read {p} as torch weights: "
                         f"{type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"pretrained: {p} is not a state_dict (a mapping of names to tensors)")
    return dict(state)


def load_resnet34(path: str | os.PathLike,
                  blocks: Sequence[tuple[FineBlock, Sequence[nn.Module]]]) -> None:
    """Copy the torchvision ResNet-34 weights in ``path`` into each module of ``blocks``
    (pairs of a fine block and its copies). Checks every key and shape before changing
    anything; the error names the file and the first offending keys."""
    state = read_state_dict(path)
    used: set[str] = set()
    plans: list[tuple[nn.Module, dict[str, Tensor]]] = []
    missing, wrong = [], []
    for spec, copies in blocks:
        if not copies:
            continue
        own = copies[0].state_dict()
        sub: dict[str, Tensor] = {}
        for local, tensor in own.items():
            key = spec.prefix + local
            if key not in state:
                if not local.endswith(OPTIONAL_SUFFIX):
                    missing.append(key)
                continue
            used.add(key)
            if state[key].shape != tensor.shape:
                wrong.append(f"{key} {tuple(state[key].shape)} (expected {tuple(tensor.shape)})")
                continue
            sub[local] = state[key]
        plans += [(module, sub) for module in copies]
    extra = sorted(k for k in set(state) - used if not k.startswith(IGNORED_PREFIXES))
    problems = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")]
                if missing else [])
    problems += [f"wrong shape {', '.join(wrong[:3])}"] if wrong else []
    problems += [f"unexpected {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else "")
                 ] if extra else []
    if problems:
        raise ValueError(f"pretrained: {path} is not a torchvision ResNet-34 state_dict: "
                         + "; ".join(problems))
    with torch.no_grad():
        for module, sub in plans:
            module.load_state_dict(sub, strict=False)
