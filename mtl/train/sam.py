"""RFN / SAM: one sharpness-aware optimiser step around any base optimiser.

SAM (Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021) minimises max_{‖ε‖₂≤ρ} L(w+ε) with the first-order solution
ε̂ = ρ·g/‖g‖₂. RFN (Gubri, Cordy, Le Traon, "Going Further: Flatness at the Rescue of Early
Stopping for Adversarial Example Transferability", arXiv 2304.02688, 2023) is the same step with
a *large* neighbourhood ρ, which makes surrogates whose adversarial examples transfer better.

One step, on one batch:
  g = ∇L(w);  ε̂ = ρ·g/‖g‖₂ with ONE global norm over the perturbed parameters (all trainable
  parameters, or only `model.shared_parameters()`); w ← w + ε̂;  g′ = ∇L(w+ε̂);  w ← w (restored
  bit-for-bit from a copy, not by subtraction);  base optimiser step with g′.
BatchNorm running statistics are updated by the first pass only: they are saved before the
second pass and restored after it. With ρ = 0 the step equals the base optimiser's exactly.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

Closure = Callable[[], torch.Tensor]


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


class SAMStep:
    """A sharpness-aware step for `model` with `optimizer` (SGD, Adam, ...) and radius `rho`.

    `perturb_params` are the parameters ε̂ is applied to (default: every trainable parameter of
    the model; pass `model.shared_parameters()` for shared-only SAM); the base optimiser still
    updates every parameter it owns with g′.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rho: float,
                 perturb_params: Iterable[torch.Tensor] | None = None) -> None:
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho >= 0:
            raise ValueError(f"rho: must be a number >= 0, got {rho!r}")
        self.model = model
        self.optimizer = optimizer
        self.rho = float(rho)
        params = ([p for p in model.parameters() if p.requires_grad] if perturb_params is None
                  else [p for p in perturb_params if p.requires_grad])
        self.perturb_params = params
        self.last_grad_norm: float = 0.0

    def step(self, closure: Closure) -> torch.Tensor:
        """Run one SAM step; `closure()` computes the loss of the batch at the current weights.

        The closure is called twice (at w and at w+ε̂) and must not call backward itself.
        Returns the loss at w (detached).
        """
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        loss = closure()
        loss.backward()
        grads = [p.grad for p in self.perturb_params]
        sq = [g.detach().double().pow(2).sum() for g in grads if g is not None]
        norm = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
        self.last_grad_norm = norm
        scale = self.rho / (norm + 1e-12)
        saved = [p.detach().clone() for p in self.perturb_params]
        bn = _bn_modules(self.model)
        bn_saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in bn]
        with torch.no_grad():
            for p, g in zip(self.perturb_params, grads):
                if g is not None:
                    p.add_(g, alpha=scale)
        opt.zero_grad(set_to_none=True)
        try:
            closure().backward()
        finally:
            with torch.no_grad():
                for p, s in zip(self.perturb_params, saved):
                    p.copy_(s)
                for m, buffers in zip(bn, bn_saved):
                    for k, b in m.named_buffers(recurse=False):
                        b.copy_(buffers[k])
        opt.step()
        return loss.detach()
