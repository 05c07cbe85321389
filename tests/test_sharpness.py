"""Sharpness measures against exact answers on models with known Hessians."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl.train.sharpness import (SharpnessConfig, hessian_max_eigenvalue, hessian_trace,
                                 sam_sharpness)


class Quadratic(nn.Module):
    """L(w) = 0.5 wᵀAw + bᵀw: Hessian A everywhere."""

    def __init__(self, a: torch.Tensor, w0: torch.Tensor, b: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", torch.zeros(len(a), dtype=a.dtype) if b is None else b)
        self.w = nn.Parameter(w0.clone())

    def loss(self) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w + self.b @ self.w


def _sym(eigs: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def test_lambda_max_matches_eigvalsh_on_quadratic() -> None:
    a = _sym([5.0, 2.0, 1.0, 0.5, 0.1, -0.3])
    m = Quadratic(a, torch.randn(6, dtype=torch.float64))
    got = hessian_max_eigenvalue(m, m.loss, iters=200, tol=1e-10)
    assert got == pytest.approx(float(torch.linalg.eigvalsh(a).max()), rel=1e-6)


def test_lambda_max_is_the_largest_not_the_dominant_eigenvalue() -> None:
    """Dominant |λ| is -6 here; λ_max is 1.5 (found by the shifted power iteration)."""
    a = _sym([-6.0, 1.5, 0.5, -1.0], seed=1)
    m = Quadratic(a, torch.zeros(4, dtype=torch.float64))
    got = hessian_max_eigenvalue(m, m.loss, iters=500, tol=1e-12)
    assert got == pytest.approx(1.5, rel=1e-4)


def test_linear_regression_hessian_is_xtx_over_n() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 1.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()

    def loss() -> torch.Tensor:
        return 0.5 * ((model(x).squeeze(1) - y) ** 2).mean()

    hess = x.T @ x / len(x)
    exact = torch.linalg.eigvalsh(hess)
    assert hessian_max_eigenvalue(model, loss, iters=300, tol=1e-12) == pytest.approx(
        float(exact.max()), rel=1e-6)
    est = hessian_trace(model, loss, samples=400, seed=3)
    # Rademacher variance: 2 Σ_{i≠j} H_ij²; 5 std errors of the mean is a safe band
    off = hess - torch.diag(torch.diag(hess))
    se = math.sqrt(2 * float((off ** 2).sum()) / 400)
    assert abs(est - float(torch.trace(hess))) < 5 * se + 1e-9


def test_hutchinson_is_exact_for_diagonal_hessians() -> None:
    a = torch.diag(torch.tensor([3.0, 1.0, 0.25], dtype=torch.float64))
    m = Quadratic(a, torch.ones(3, dtype=torch.float64))
    assert hessian_trace(m, m.loss, samples=3) == pytest.approx(4.25, rel=1e-12)


def test_sam_sharpness_at_minimum_is_rho_squared_lambda_over_two() -> None:
    a = _sym([4.0, 1.0, 0.5, 0.2], seed=4)
    m = Quadratic(a, torch.zeros(4, dtype=torch.float64))
    rho = 0.1
    exact = rho ** 2 * 4.0 / 2
    got = sam_sharpness(m, m.loss, rho=rho, steps=60)
    assert got <= exact * (1 + 1e-9)
    assert got == pytest.approx(exact, rel=1e-3)
    assert torch.equal(m.w, torch.zeros(4, dtype=torch.float64))  # weights restored


def test_sam_sharpness_off_minimum_within_tight_bounds() -> None:
    """With gradient g at w: ρ‖g‖ + ½ρ² ĝᵀAĝ (the SAM point) ≤ S ≤ ρ‖g‖ + ½ρ²λ_max."""
    a = _sym([3.0, 1.0, 0.5], seed=5)
    w0 = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    m = Quadratic(a, w0)
    rho = 0.05
    g = a @ w0
    gh = g / g.norm()
    lower = rho * float(g.norm()) + 0.5 * rho ** 2 * float(gh @ a @ gh)
    upper = rho * float(g.norm()) + 0.5 * rho ** 2 * 3.0
    got = sam_sharpness(m, m.loss, rho=rho, steps=10)
    assert lower - 1e-12 <= got <= upper + 1e-12
    assert torch.equal(m.w.detach(), w0)


def test_measures_do_not_touch_grads() -> None:
    a = _sym([2.0, 1.0], seed=6)
    m = Quadratic(a, torch.ones(2, dtype=torch.float64))
    hessian_max_eigenvalue(m, m.loss)
    hessian_trace(m, m.loss, samples=2)
    sam_sharpness(m, m.loss, rho=0.1)
    assert m.w.grad is None


@pytest.mark.parametrize("kwargs, field", [
    ({"num_samples": 0}, "num_samples"), ({"power_iters": 0}, "power_iters"),
    ({"hutchinson_samples": -1}, "hutchinson_samples"), ({"rho": 0.0}, "rho"),
    ({"ascent_steps": 0}, "ascent_steps"), ({"tol": float("nan")}, "tol")])
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"sharpness.{field}"):
        SharpnessConfig(**kwargs)


def test_config_round_trip_and_unknown_key() -> None:
    cfg = SharpnessConfig(num_samples=16, rho=0.5)
    assert SharpnessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        SharpnessConfig.from_dict({"rh0": 1.0})


def test_measure_sharpness_on_a_real_model_is_repeatable_and_side_effect_free() -> None:
    from mtl.data.scenes import SyntheticScenes
    from mtl.models import Layout, build_model
    from mtl.train.sharpness import measure_sharpness

    tasks = ("segment_semantic", "depth_zbuffer")
    ds = SyntheticScenes("train", size=16, length=12, tasks=tasks)
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(3, 2), list(tasks),
                        {t: ds.task_channels[t] for t in tasks}, width=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = SharpnessConfig(num_samples=6, power_iters=4, hutchinson_samples=2, ascent_steps=2)
    first = measure_sharpness(model, ds, cfg)
    assert measure_sharpness(model, ds, cfg) == first
    assert set(first) == {"subset_loss", "lambda_max", "hessian_trace", "sam_sharpness"}
    assert all(math.isfinite(v) for v in first.values()) and first["sam_sharpness"] >= 0
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
