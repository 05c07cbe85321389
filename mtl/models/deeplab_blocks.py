"""The pieces of the DGBA paper's network: Deeplab-ResNet-34 blocks and the ASPP task head.

The backbone is TreeMTL's (Zhang, Liu & Guan, AutoML-Conf 2022; used unchanged by DGBA, Zhang
et al. 2023): a ResNet-34 (He et al. 2016) cut into 17 *fine* blocks — the stem (7x7/2 conv,
BN, ReLU, 3x3/2 max-pool with ceil rounding) and the 16 residual units of the stages
(3, 4, 6, 3 units of 64, 128, 256, 512 channels) — with the Deeplab changes: stages 3 and 4
keep stride 1 and dilate their 3x3 convolutions by 2 and 4 (output stride 8), and their first
units always have a 1x1 projection shortcut. TreeMTL groups the fine blocks into 5 *coarse*
blocks {stem}, {1-3}, {4-7}, {8-13}, {14-16} (the stem and the four stages); layouts are over
the coarse blocks.

The head (Chen et al., DeepLab v2 ASPP) sums four branches, one per dilation 6, 12, 18, 24:
3x3 dilated conv (512 -> 1024) -> ReLU -> dropout -> 1x1 (1024 -> 1024) -> ReLU -> dropout ->
1x1 (1024 -> classes), all with biases.

Submodule names follow torchvision's ResNet (``conv1``, ``bn1``, ``conv2``, ``bn2``,
``downsample.0/1``) so ImageNet weights map onto fine blocks by name (mtl.models.pretrained).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

STAGE_UNITS = (3, 4, 6, 3)
STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 1, 1)
STAGE_DILATIONS = (1, 1, 2, 4)
NUM_FINE_BLOCKS = 1 + sum(STAGE_UNITS)  # 17
COARSE_BLOCKS = ((0,), (1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11, 12, 13), (14, 15, 16))
"""TreeMTL's mapping of its 5 coarse blocks (the layout's blocks) to the 17 fine blocks."""
FEATURE_CHANNELS = STAGE_CHANNELS[-1]
ASPP_RATES = (6, 12, 18, 24)
ASPP_CHANNELS = 1024


@dataclass(frozen=True)
class FineBlock:
    """One fine block: the stem (``stage`` -1) or unit ``unit`` of ``stage`` (0-based), and the
    torchvision key prefix of its weights (``""`` for the stem, ``layer3.1.`` ...)."""

    index: int
    stage: int
    unit: int
    cin: int
    cout: int
    stride: int
    dilation: int
    projection: bool

    @property
    def prefix(self) -> str:
        return "" if self.stage < 0 else f"layer{self.stage + 1}.{self.unit}."


def fine_blocks() -> tuple[FineBlock, ...]:
    """The 17 fine blocks in order, with their shapes."""
    blocks = [FineBlock(0, -1, 0, 3, 64, 4, 1, False)]
    cin = 64
    for stage, units in enumerate(STAGE_UNITS):
        cout, dilation = STAGE_CHANNELS[stage], STAGE_DILATIONS[stage]
        for unit in range(units):
            stride = STAGE_STRIDES[stage] if unit == 0 else 1
            # TreeMTL/AdaShare: a projection when the shape changes or the stage is dilated
            projection = unit == 0 and (stride != 1 or cin != cout or dilation > 1)
            blocks.append(FineBlock(len(blocks), stage, unit, cin, cout, stride, dilation,
                                    projection))
            cin = cout
    return tuple(blocks)


class Stem(nn.Module):
    """7x7/2 conv (no bias) -> BN -> ReLU -> 3x3/2 max-pool (ceil rounding, as TreeMTL)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(F.relu(self.bn1(self.conv1(x))))


class ResidualUnit(nn.Module):
    """A ResNet basic unit with dilated 3x3 convs (padding = dilation keeps the size)."""

    def __init__(self, spec: FineBlock) -> None:
        super().__init__()
        d = spec.dilation
        self.conv1 = nn.Conv2d(spec.cin, spec.cout, 3, stride=spec.stride, padding=d,
                               dilation=d, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.cout)
        self.conv2 = nn.Conv2d(spec.cout, spec.cout, 3, padding=d, dilation=d, bias=False)
        self.bn2 = nn.BatchNorm2d(spec.cout)
        self.downsample = (nn.Sequential(nn.Conv2d(spec.cin, spec.cout, 1, stride=spec.stride,
                                                   bias=False), nn.BatchNorm2d(spec.cout))
                           if spec.projection else None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        # not in place: x may be a memoised feature map another branch still reads
        return F.relu(out + shortcut)


def make_fine_block(spec: FineBlock) -> nn.Module:
    """A fresh module for one fine block, initialised as TreeMTL does (convs N(0, 0.01), BN
    weight 1 / bias 0)."""
    module = Stem() if spec.stage < 0 else ResidualUnit(spec)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class ASPPBranch(nn.Module):
    """One dilated branch of the ASPP head."""

    def __init__(self, cin: int, hidden: int, cout: int, rate: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=rate, dilation=rate)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, cout, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.relu(self.conv1(x)))
        x = self.dropout(F.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    """The sum of `ASPPBranch` outputs at dilations ``rates`` (PyTorch's default init, as
    TreeMTL leaves its heads)."""

    def __init__(self, out_channels: int, hidden: int = ASPP_CHANNELS,
                 rates: tuple[int, ...] = ASPP_RATES, cin: int = FEATURE_CHANNELS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ASPPBranch(cin, hidden, out_channels, r) for r in rates)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
