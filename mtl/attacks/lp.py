"""Exact solvers of the linear programs an attack step solves (docs/design.md section 3).

One step maximises c . delta over a box (the eps-ball around the clean image intersected with the
[0, 1] pixel box, around the current iterate). The constraints are only a box, so the LP
separates per coordinate and the closed form is its exact optimum; the ILP view (delta = eps * s,
s in {-1, +1}^n) is solved by s = sign(c). Both have a pulp (CBC) path that tests use as an
oracle; `cbc` and `require_optimal` are shared with the MINMAX LP.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

LP_SOLVERS = ("closed_form", "pulp")


def _check_solver(solver: str) -> None:
    if solver not in LP_SOLVERS:
        raise ValueError(f"solver: unknown value {solver!r}; allowed: {list(LP_SOLVERS)}")


def cbc() -> "pulp.PULP_CBC_CMD":  # noqa: F821
    """PuLP's bundled CBC, quiet. PuLP 3.3 marks PULP_CBC_CMD deprecated in favour of a separately
    installed CBC (COIN_CMD), which this environment does not have, so the warning is muted."""
    import pulp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False)


def require_optimal(problem: "pulp.LpProblem") -> None:  # noqa: F821 - pulp imported lazily
    """Raise unless CBC proved optimality (PuLP may say 'Optimal' after a time limit: read
    `sol_status`, see docs/design.md section 8)."""
    import pulp

    if problem.status != pulp.LpStatusOptimal or problem.sol_status != pulp.LpSolutionOptimal:
        raise RuntimeError(f"pulp/CBC did not prove optimality: status="
                           f"{pulp.LpStatus[problem.status]!r}, "
                           f"sol_status={pulp.LpSolution[problem.sol_status]!r}")


def box_argmax(c: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The closed form of `solve_box_lp` without its checks (no host sync): for callers whose
    bounds hold lo <= hi by construction, such as the attack loop's step."""
    return torch.where(c > 0, hi, torch.where(c < 0, lo, torch.zeros_like(c).clamp(lo, hi)))


def solve_box_lp(c: Tensor, lo: Tensor, hi: Tensor, solver: str = "closed_form") -> Tensor:
    """Exact maximiser of c . delta subject to lo <= delta <= hi (element-wise, any shape).

    closed_form: delta = hi where c > 0, lo where c < 0, and for c == 0 (every value is optimal)
    the point of [lo, hi] closest to 0, i.e. "do not move" when the box contains 0.
    pulp: the same LP written for CBC (an oracle for tests; slow on large tensors; CBC reports
    values to about 1e-6).
    """
    _check_solver(solver)
    if not (c.shape == lo.shape == hi.shape):
        raise ValueError(f"c, lo, hi: shapes must match, got {tuple(c.shape)}, "
                         f"{tuple(lo.shape)}, {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError("lo, hi: need lo <= hi element-wise")
    if solver == "closed_form":
        return box_argmax(c, lo, hi)
    tie = torch.zeros_like(c).clamp(lo, hi)
    import pulp

    cf, lf, hf = (t.detach().reshape(-1).double().cpu().tolist() for t in (c, lo, hi))
    problem = pulp.LpProblem("box_lp", pulp.LpMaximize)
    xs = [problem.add_variable(f"d{i}", lf[i], hf[i]) for i in range(len(cf))]
    problem += pulp.LpAffineExpression(list(zip(xs, cf)))
    problem.solve(cbc())
    require_optimal(problem)
    out = [v.varValue if v.varValue is not None else t for v, t in
           zip(xs, tie.reshape(-1).tolist())]
    return torch.tensor(out, dtype=c.dtype, device=c.device).reshape(c.shape)


def solve_sign_ilp(c: Tensor, solver: str = "closed_form") -> Tensor:
    """Exact maximiser of c . s over s in {-1, +1}^n (the ILP view of one eps-step, delta = eps*s).

    closed_form: s = +1 where c >= 0 else -1 (for c == 0 both signs are optimal).
    pulp: binary variables b with s = 2b - 1, solved by CBC.
    """
    _check_solver(solver)
    if solver == "closed_form":
        return torch.where(c >= 0, torch.ones_like(c), -torch.ones_like(c))
    import pulp

    cf = c.detach().reshape(-1).double().cpu().tolist()
    problem = pulp.LpProblem("sign_ilp", pulp.LpMaximize)
    bs = [problem.add_variable(f"b{i}", cat=pulp.LpBinary) for i in range(len(cf))]
    problem += pulp.LpAffineExpression([(b, 2.0 * ci) for b, ci in zip(bs, cf)]) - sum(cf)
    problem.solve(cbc())
    require_optimal(problem)
    out = [2.0 * (b.varValue if b.varValue is not None else 1.0) - 1.0 for b in bs]
    return torch.tensor(out, dtype=c.dtype, device=c.device).reshape(c.shape)
