"""The DGBA paper's multi-task network: a Deeplab-ResNet-34 tree with one ASPP head per task.

Zhang et al. 2023 (DGBA, arXiv 2305.12066) attack TreeMTL's trees (Zhang, Liu & Guan 2022):
a layout over 5 coarse blocks is expanded to the 17 fine blocks by repeating each coarse
block's partition over its fine blocks (TreeMTL's ``coarse_to_fined``), and every (fine
block, task group) owns one module, so tasks in one group run the very same weights. The
registered model ``deeplab_resnet34`` takes such a 5-block layout (``treemtl:<i>`` in a sweep);
a 17-block layout is accepted from Python as well.

Inputs are RGB in [0, 1] (normalised here with ImageNet statistics, which torchvision's
ImageNet weights expect). The heads see output-stride-8 features; their maps are resized to
the input size, nearest-neighbour by default because the authors score predictions resized
that way (``F.interpolate(pred, size=label_size)``), so with labels at the input size
(``resize`` in the NYUv2 / Taskonomy loaders) the metrics are theirs. Their losses are taken
at the 1/8 grid against nearest-downsampled labels; ours at label resolution (docs/
reproduce-dgba.md says what that changes).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mtl import tasks as task_registry
from mtl.config.reading import as_choice, as_int, brief, fail
from mtl.models.blocks import Normalize
from mtl.models.deeplab_blocks import (ASPP_CHANNELS, ASPP_RATES, COARSE_BLOCKS,
                                       NUM_FINE_BLOCKS, ASPPHead, fine_blocks, make_fine_block)
from mtl.models.layout import Group, Layout
from mtl.models.network import resolve_out_channels
from mtl.models.pretrained import load_resnet34

UPSAMPLING = ("nearest", "bilinear")


def fine_partitions(layout: Layout) -> tuple[tuple[Group, ...], ...]:
    """The layout's partition for each of the 17 fine blocks (a 5-block layout is expanded
    over TreeMTL's coarse-to-fine mapping; a 17-block one is taken as it is)."""
    if layout.num_blocks == NUM_FINE_BLOCKS:
        return layout.partitions
    if layout.num_blocks != len(COARSE_BLOCKS):
        raise ValueError(f"layout: must have {len(COARSE_BLOCKS)} (coarse) or "
                         f"{NUM_FINE_BLOCKS} (fine) blocks, got {layout.num_blocks} in {layout}")
    return tuple(layout.partitions[c] for c, fines in enumerate(COARSE_BLOCKS) for _ in fines)


def _key(fine: int, group: Group) -> str:
    return f"f{fine}_t{'-'.join(str(t) for t in group)}"


class DeeplabTree(nn.Module):
    """Deeplab-ResNet-34 blocks shared per ``layout``, an ASPP head per task.

    ``forward(x, task=None, tasks=None)`` returns task -> ``[B, C, H, W]`` at the input size
    and runs only the requested tasks' paths, each (block, group) module once per call.
    """

    def __init__(self, layout: Layout | str, tasks: Sequence[str],
                 out_channels: Mapping[str, int] | None = None, *,
                 aspp_channels: int = ASPP_CHANNELS, upsample: str = "nearest",
                 pretrained: str | None = None) -> None:
        super().__init__()
        layout = Layout.coerce(layout)
        names = tuple(tasks)
        if isinstance(tasks, str) or not names or len(set(names)) != len(names):
            raise ValueError(f"tasks: expected distinct task names, got {tasks!r}")
        if layout.num_tasks != len(names):
            raise ValueError(f"tasks: layout {layout} has {layout.num_tasks} tasks but "
                             f"{len(names)} task names were given: {list(names)}")
        for name in names:
            if task_registry.get_task(name).kind != "dense":
                raise ValueError(f"tasks: {name!r} is an image-level task; deeplab_resnet34 "
                                 "has dense (ASPP) heads only")
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample: must be one of {list(UPSAMPLING)}, got {upsample!r}")
        self.layout, self.tasks, self.upsample = layout, names, upsample
        self.out_channels = resolve_out_channels(names, out_channels)
        self.normalize = Normalize()
        partitions = fine_partitions(layout)
        specs = fine_blocks()
        self.backbone = nn.ModuleDict({_key(f, g): make_fine_block(specs[f])
                                       for f, part in enumerate(partitions) for g in part})
        self.heads = nn.ModuleDict({t: ASPPHead(self.out_channels[t], aspp_channels,
                                                ASPP_RATES) for t in names})
        self._paths = {t: tuple(_key(f, next(g for g in part if i in g))
                                for f, part in enumerate(partitions))
                       for i, t in enumerate(names)}
        self._shared = [_key(f, g) for f, part in enumerate(partitions) for g in part
                        if len(g) > 1]
        if pretrained is not None:
            load_resnet34(pretrained, [(specs[f], [self.backbone[_key(f, g)] for g in part])
                                       for f, part in enumerate(partitions)])

    def forward(self, x: Tensor, task: str | None = None,
                tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Predictions for all tasks, or only ``task`` / ``tasks``."""
        if task is not None and tasks is not None:
            raise ValueError("task, tasks: pass at most one of them")
        names = (task,) if task is not None else (
            self.tasks if tasks is None else ((tasks,) if isinstance(tasks, str)
                                              else tuple(tasks)))
        unknown = [t for t in names if t not in self._paths]
        if unknown or not names:
            raise ValueError(f"task: {unknown or 'none'} not tasks of this model; allowed: "
                             f"{list(self.tasks)}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        start = self.normalize(x)
        memo: dict[str, Tensor] = {}
        out: dict[str, Tensor] = {}
        for name in names:
            h = start
            for key in self._paths[name]:
                if key not in memo:
                    memo[key] = self.backbone[key](h)
                h = memo[key]
            pred = self.heads[name](h)
            out[name] = (F.interpolate(pred, size=size, mode="nearest")
                         if self.upsample == "nearest" else
                         F.interpolate(pred, size=size, mode="bilinear", align_corners=False))
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the backbone modules two or more tasks run (for SAM on shared
        blocks only)."""
        return [p for key in self._shared for p in self.backbone[key].parameters()]

    def extra_repr(self) -> str:
        return f"layout={self.layout}, tasks={list(self.tasks)}, upsample={self.upsample}"


def deeplab_resnet34(tasks: Sequence[str], task_channels: Mapping[str, int],
                     layout: Layout | str, pretrained: str | None = None,
                     aspp_channels: int = ASPP_CHANNELS, upsample: str = "nearest"
                     ) -> DeeplabTree:
    """The registered model ``deeplab_resnet34``: the tree of ``layout`` (5 coarse blocks)
    for ``tasks``, heads sized by the dataset's ``task_channels``; ``pretrained`` a local
    torchvision ResNet-34 file, ``aspp_channels`` the heads' width (1024 in the paper)."""
    channels = {t: task_channels[t] for t in tasks if task_channels.get(t) is not None}
    return DeeplabTree(layout, list(tasks), channels, aspp_channels=aspp_channels,
                       upsample=upsample, pretrained=pretrained)


deeplab_resnet34.num_blocks = len(COARSE_BLOCKS)  # layouts (branch points, `all`, treemtl:<i>)


def check_deeplab(options: Mapping[str, Any], path: str) -> None:
    """``pretrained`` an existing file, ``aspp_channels`` an int in 1..4096, ``upsample`` one
    of nearest / bilinear (when given). The file's contents are checked when it is loaded."""
    if options.get("pretrained") is not None:
        value = options["pretrained"]
        if not isinstance(value, (str, os.PathLike)) or not Path(value).is_file():
            fail(f"{path}.pretrained", f"{brief(value)} is not an existing file; expected a "
                 "local torchvision ResNet-34 state_dict (nothing is downloaded)")
    if "aspp_channels" in options:
        as_int(options["aspp_channels"], f"{path}.aspp_channels", 1, 4096)
    if "upsample" in options:
        as_choice(options["upsample"], f"{path}.upsample", UPSAMPLING, "upsampling")
