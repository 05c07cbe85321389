"""``compute``: optional precision and speed settings of a trial (GPU-ready), read and applied.

    compute: {autocast: none | bf16, channels_last: false, compile: false}

- ``autocast: bf16`` runs training's and the attacks' forwards under
  ``torch.autocast(device_type, dtype=torch.bfloat16)``: weights, images, losses' reductions,
  parameter gradients and the gradients w.r.t. the input stay float32 (the numbers change
  slightly; results are close to float32, not equal).
- ``channels_last: true`` stores the model's 4-D weights and the images in channels-last memory
  format (faster convolutions on GPUs with tensor cores; the numbers stay within float
  rounding).
- ``compile: true`` crafts the attacks with ``torch.compile(model)`` (training and scoring stay
  eager); where torch.compile cannot run, one warning line is printed and the eager model is
  used.

All three default to off; a run config that leaves the section out (or gives the defaults) has
the trial id it had before the section existed.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtl.config.reading import Node, as_bool, as_choice

COMPUTE_KEYS = ("autocast", "channels_last", "compile")
AUTOCAST = ("none", "bf16")
DEFAULTS = {"autocast": "none", "channels_last": False, "compile": False}


def parse_compute(raw: Any) -> dict:
    """``compute`` (module docstring) as a plain dict with every key; null = the defaults."""
    if raw is None:
        return dict(DEFAULTS)
    node = Node(raw, "compute", COMPUTE_KEYS)
    return {"autocast": as_choice(node.get("autocast", "none"), node.at("autocast"), AUTOCAST,
                                  "autocast"),
            "channels_last": as_bool(node.get("channels_last", False), node.at("channels_last")),
            "compile": as_bool(node.get("compile", False), node.at("compile"))}


@dataclass(frozen=True)
class Compute:
    """The parsed ``compute`` settings and how training and attacks apply them."""

    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "Compute":
        return cls(**parse_compute(None if values is None else dict(values)))

    @property
    def is_default(self) -> bool:
        return self == Compute()

    def autocast_context(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """bf16 autocast on ``device``'s type, or a context that does nothing."""
        if self.autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in channels-last memory format when asked (in place; returns it)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def images(self, images: Tensor) -> Tensor:
        """Images in the memory format the model expects."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def crafter(self, craft: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``craft(model, batch, spec, clean_outputs=None)`` under these settings: images in the
        model's memory format, forwards under autocast, the model compiled once per model object
        when asked (falling back to eager with one warning line if compiling fails). The
        evaluation's clean outputs are passed on only with the default settings: otherwise the
        crafting forward differs from the scoring forward that made them, so the attack runs its
        own clean forward (the numbers it had before they were shared)."""
        compiled: dict[int, nn.Module] = {}
        broken: list[str] = []

        def run(model: nn.Module, batch: Mapping[str, Any], spec: Any,
                clean_outputs: Mapping[str, Tensor] | None = None) -> Tensor:
            shared = clean_outputs if self.is_default else None
            batch = {**batch, "image": self.images(batch["image"])}
            device = next(model.parameters()).device
            use = model
            if self.compile and not broken:
                use = compiled.setdefault(id(model), _compiled(model))
            try:
                with self.autocast_context(device):
                    return craft(use, batch, spec, clean_outputs=shared).contiguous()
            except Exception as err:  # noqa: BLE001  compile failed: eager from now on
                if use is model:
                    raise
                broken.append(str(err))
                print(f"compute.compile: torch.compile failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); crafting eagerly",
                      file=sys.stderr)
                with self.autocast_context(device):
                    return craft(model, batch, spec, clean_outputs=shared).contiguous()
        return run


def _compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: shares the model's parameters and delegates its attributes
    (``tasks``, ``out_channels``) to it."""
    return torch.compile(model)
