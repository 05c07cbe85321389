"""Random labelled batches for attack tests: the four tasks of the batch contract, small images."""
from __future__ import annotations

import torch

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "scene_class")
CHANNELS = {"segment_semantic": 5, "scene_class": 4}


def random_batch(B: int, H: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A [B,3,H,H] image in [0,1] with random labels for TASKS (depth in [1,2), unit normals)."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(B, 3, H, H, generator=g),
            "segment_semantic": torch.randint(0, CHANNELS["segment_semantic"], (B, H, H),
                                              generator=g),
            "depth_zbuffer": torch.rand(B, 1, H, H, generator=g) + 1.0,
            "normal": torch.nn.functional.normalize(torch.randn(B, 3, H, H, generator=g), dim=1),
            "scene_class": torch.randint(0, CHANNELS["scene_class"], (B,), generator=g)}
