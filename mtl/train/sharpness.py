"""Sharpness of the loss surface around the current weights (per checkpoint).

Three measures, all on a fixed training subset with the model in eval mode (so BatchNorm uses
its running statistics and the loss is a deterministic function of the weights):

- `hessian_max_eigenvalue`: the largest (algebraic) Hessian eigenvalue, by power iteration on
  Hessian-vector products (double backward); if the dominant eigenvalue is negative, a shifted
  power iteration recovers the largest one.
- `hessian_trace`: Hutchinson's estimator E[vᵀHv] with Rademacher v.
- `sam_sharpness`: max_{‖ε‖₂ ≤ ρ} L(w+ε) − L(w) (Foret et al. 2021; the quantity the RFN paper,
  Gubri et al. 2023, ties to transferability), by projected normalised gradient ascent started
  at the first-order SAM point ρ·g/‖g‖.

None of them touches `.grad` or the global RNG (local generators), and weights are restored
bit-for-bit, so measuring sharpness inside training never changes the training trajectory.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from mtl.config.limits import MAX_SAMPLES, MAX_SEED, MAX_STEPS
from mtl.config.reading import brief
from mtl.models.outputs import task_outputs
from mtl.models.task_model import as_task_model
from mtl.tasks import task_loss
from mtl.train.fields import from_mapping

LossFn = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class SharpnessConfig:
    """What to measure and how hard.

    num_samples: size of the fixed training subset (drawn once with `seed`).
    power_iters: power-iteration steps for λ_max (stops early at relative change < tol).
    hutchinson_samples: Rademacher probes for the trace (0 = skip the trace).
    rho: radius of the SAM-sharpness ball (L2 over all trainable parameters).
    ascent_steps: projected gradient-ascent steps for SAM-sharpness.
    """

    num_samples: int = 64
    power_iters: int = 20
    hutchinson_samples: int = 10
    rho: float = 0.05
    ascent_steps: int = 5
    tol: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise one ValueError naming the first bad field and its allowed values."""
        for name, low, high in (("num_samples", 1, MAX_SAMPLES), ("power_iters", 1, MAX_STEPS),
                                ("hutchinson_samples", 0, MAX_STEPS),
                                ("ascent_steps", 1, MAX_STEPS), ("seed", 0, MAX_SEED)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValueError(f"sharpness.{name}: must be an int in {low}..{high}, "
                                 f"got {brief(v)}")
        for name in ("rho", "tol"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                    or v <= 0):
                raise ValueError(f"sharpness.{name}: must be a finite number > 0, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that `from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SharpnessConfig":
        """Inverse of `to_dict`; unknown keys raise a ValueError listing the allowed ones."""
        return from_mapping(cls, data, "sharpness")


def _params(model: nn.Module, params: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    ps = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not ps:
        raise ValueError("params: no trainable parameters to measure sharpness over")
    return ps


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def _norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return _dot(a, a).sqrt()


def _randn_like(ps: Sequence[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in ps]


def _power_iteration(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                     v: list[torch.Tensor], shift: float, iters: int, tol: float) -> float:
    """Dominant eigenvalue of (H − shift·I) by power iteration from v."""
    nv = _norm(v)
    v = [x / nv for x in v]
    eig = None
    for _ in range(iters):
        hv = hvp(v)
        if shift:
            hv = [h - shift * x for h, x in zip(hv, v)]
        new = float(_dot(v, hv))
        n = float(_norm(hv))
        if n == 0.0:  # v lies in the null space: H v = 0
            return new
        v = [h / n for h in hv]
        if eig is not None and abs(new - eig) <= tol * max(abs(eig), 1e-12):
            eig = new
            break
        eig = new
    return float(eig)


def hessian_max_eigenvalue(model: nn.Module, loss_fn: LossFn, *,
                           params: Sequence[torch.Tensor] | None = None, iters: int = 20,
                           tol: float = 1e-3, seed: int = 0) -> float:
    """Largest algebraic eigenvalue of ∇²L(w) over `params` (default: trainable parameters).

    Power iteration finds the eigenvalue of largest magnitude; when that one is negative the
    largest algebraic one is found by a second power iteration on H − λ_dom·I (PSD).
    """
    if iters < 1:
        raise ValueError(f"iters: must be an int >= 1, got {iters!r}")
    ps = _params(model, params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, ps, create_graph=True)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        out = torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True,
                                  allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(out, ps)]

    gen = torch.Generator().manual_seed(seed)
    dominant = _power_iteration(hvp, _randn_like(ps, gen), 0.0, iters, tol)
    if dominant >= 0:
        return dominant
    shifted = _power_iteration(hvp, _randn_like(ps, gen), dominant, iters, tol)
    return dominant + shifted


def hessian_trace(model: nn.Module, loss_fn: LossFn, *,
                  params: Sequence[torch.Tensor] | None = None, samples: int = 10,
                  seed: int = 0) -> float:
    """Hutchinson estimate of tr ∇²L(w): the mean of vᵀHv over Rademacher probes v."""
    if samples < 1:
        raise ValueError(f"samples: must be an int >= 1, got {samples!r}")
    ps = _params(model, params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, ps, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype)
             for p in ps]
        hv = torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True, allow_unused=True)
        total += float(sum((h.double() * x.double()).sum() for h, x in zip(hv, v)
                           if h is not None))
    return total / samples


def sam_sharpness(model: nn.Module, loss_fn: LossFn, *, rho: float, steps: int = 5,
                  params: Sequence[torch.Tensor] | None = None, seed: int = 0) -> float:
    """max_{‖ε‖₂ ≤ ρ} L(w+ε) − L(w), estimated by projected normalised gradient ascent.

    Starts at ε = ρ·g/‖g‖ (the SAM point; a seeded random direction when g = 0), then takes
    `steps` steps ε ← Π(ε + ρ·∇L(w+ε)/‖∇L(w+ε)‖) onto the ball, keeping the best value seen
    (ε = 0 is feasible, so the result is ≥ 0). Weights are restored exactly afterwards.
    """
    if rho <= 0:
        raise ValueError(f"rho: must be > 0, got {rho!r}")
    if steps < 1:
        raise ValueError(f"steps: must be an int >= 1, got {steps!r}")
    ps = _params(model, params)
    saved = [p.detach().clone() for p in ps]
    try:
        with torch.enable_grad():
            base = loss_fn()
            grads = torch.autograd.grad(base, ps, allow_unused=True)
        base_value = float(base.detach())
        g = [torch.zeros_like(p) if x is None else x for x, p in zip(grads, ps)]
        gn = float(_norm(g))
        if gn == 0.0:
            g = _randn_like(ps, torch.Generator().manual_seed(seed))
            gn = float(_norm(g))
        eps = [rho * x / gn for x in g]
        best = 0.0
        for k in range(steps + 1):
            with torch.no_grad():
                for p, s, e in zip(ps, saved, eps):
                    p.copy_(s + e)
            with torch.enable_grad():
                value = loss_fn()
                if k < steps:
                    grads = torch.autograd.grad(value, ps, allow_unused=True)
            best = max(best, float(value.detach()) - base_value)
            if k == steps:
                break
            g = [torch.zeros_like(p) if x is None else x for x, p in zip(grads, ps)]
            gn = float(_norm(g))
            if gn == 0.0:
                break
            eps = [e + rho * x / gn for e, x in zip(eps, g)]
            en = float(_norm(eps))
            if en > rho:
                eps = [e * (rho / en) for e in eps]
    finally:
        with torch.no_grad():
            for p, s in zip(ps, saved):
                p.copy_(s)
    return best


def _subset_batch(dataset: Any, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: is empty; cannot measure sharpness")
    k = min(num_samples, n)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    return torch.utils.data.default_collate([dataset[int(i)] for i in idx])


def measure_sharpness(model: nn.Module, dataset: Any, cfg: SharpnessConfig, *,
                      loss_weights: Mapping[str, float] | None = None,
                      device: torch.device | str | None = None,
                      tasks: Sequence[str] | None = None) -> dict[str, float]:
    """λ_max, Hessian trace and SAM-sharpness of the weighted multi-task training loss.

    The subset is `cfg.num_samples` items of `dataset` drawn with `cfg.seed` (the same items at
    every checkpoint). Returns `{"subset_loss", "lambda_max", "sam_sharpness"}` plus
    `"hessian_trace"` when `cfg.hutchinson_samples > 0`.
    The model's train/eval mode is restored afterwards. `tasks` names the tasks of a model
    without a `tasks` attribute (see `as_task_model`).
    """
    model = as_task_model(model, tasks)
    if device is None:
        device = next(model.parameters()).device
    tasks = list(model.tasks)
    weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in tasks}
    batch = {k: v.to(device) for k, v in _subset_batch(dataset, cfg.num_samples, cfg.seed).items()}

    def loss_fn() -> torch.Tensor:
        preds = task_outputs(model, batch["image"], tasks)
        return sum(weights[t] * task_loss(t, preds[t], batch).mean() for t in tasks)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss = float(loss_fn())
        out = {"subset_loss": loss,
               "lambda_max": hessian_max_eigenvalue(model, loss_fn, iters=cfg.power_iters,
                                                    tol=cfg.tol, seed=cfg.seed)}
        if cfg.hutchinson_samples > 0:
            out["hessian_trace"] = hessian_trace(model, loss_fn, samples=cfg.hutchinson_samples,
                                                 seed=cfg.seed)
        out["sam_sharpness"] = sam_sharpness(model, loss_fn, rho=cfg.rho,
                                             steps=cfg.ascent_steps, seed=cfg.seed)
    finally:
        model.train(was_training)
    return out
