"""Building blocks of the multi-task network: normalisation, the 5 backbone blocks, task heads.

The backbone is a small ResNet (He et al. 2016, BasicBlock units): block 0 is the stem, blocks
1-4 are residual stages with channels (w, 2w, 4w, 8w). One instance of a block exists per
(block, group) of the sharing layout, so `make_block(b, ...)` must return a fresh module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_BLOCKS = 5
# ImageNet statistics: the usual choice for RGB inputs in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per RGB channel, so the network takes pixel-space inputs in [0, 1]."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        # constants, not state: kept out of the state_dict but moved by .to(device)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic residual unit: two 3x3 convs, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # not in-place: the input may be a memoised feature map that other branches read
        return F.relu(out + self.shortcut(x))


def block_channels(width: int) -> tuple[int, ...]:
    """Output channels of blocks 0..4: (w, w, 2w, 4w, 8w)."""
    return (width, width, 2 * width, 4 * width, 8 * width)


def block_strides() -> tuple[int, ...]:
    """Downsampling of blocks 0..4; cumulative strides 2, 2, 4, 8, 16."""
    return (2, 1, 2, 2, 2)


def make_block(block: int, width: int, stage_depth: int = 1) -> nn.Module:
    """A fresh module for backbone block `block` (0 = stem, 1-4 = stages of `stage_depth`
    BasicBlocks, the first one downsampling)."""
    if not 0 <= block < NUM_BLOCKS:
        raise ValueError(f"block: must be in 0..{NUM_BLOCKS - 1}, got {block}")
    channels, stride = block_channels(width)[block], block_strides()[block]
    if block == 0:
        return conv_bn_relu(3, channels, 3, stride=stride)
    cin = block_channels(width)[block - 1]
    units = [BasicBlock(cin, channels, stride)]
    units += [BasicBlock(channels, channels) for _ in range(stage_depth - 1)]
    return nn.Sequential(*units)


class DenseHead(nn.Module):
    """Per-pixel head: fuse the deepest features with the task's own block-1 features.

    deep (8w, 1/16) -> 1x1 conv-BN-ReLU -> bilinear up to the skip's size, concat the skip
    (w, 1/2; from the same task's branch path, so no parameters cross tasks) -> 3x3
    conv-BN-ReLU -> 1x1 conv to `out_channels` -> bilinear up to the input size.
    With `skip=False` the decoder reads only the deepest features.
    """

    def __init__(self, width: int, out_channels: int, skip: bool = True) -> None:
        super().__init__()
        deep, hidden = block_channels(width)[-1], 2 * width
        self.skip = skip
        self.reduce = conv_bn_relu(deep, hidden, kernel=1)
        self.fuse = conv_bn_relu(hidden + (block_channels(width)[1] if skip else 0), hidden)
        self.classify = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        out = self.reduce(features[-1])
        if self.skip:
            low = features[1]
            out = F.interpolate(out, size=low.shape[-2:], mode="bilinear", align_corners=False)
            out = torch.cat([out, low], dim=1)
        out = self.classify(self.fuse(out))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class PooledHead(nn.Module):
    """Image-level head: global average pool of the deepest features + linear logits."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(block_channels(width)[-1], out_channels)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features[-1], 1), 1))


def init_weights(module: nn.Module) -> None:
    """He init for convs (fan_out, ReLU), BN to identity, small normal for linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
