"""APGD variant="official": the DGBA authors' loop (MTLAttack-DGBA main_r/autoattack.py) as the
issue states its rules, transcribed independently below in the authors' own shape (x[0..2]
buffers, f and eta arrays indexed by iteration, per-task losses and directions written by hand),
and compared with ours for TOTAL (pixel mean), SINGLE, SignSum and DGBA in float64: the same
final images, on a small ResNet (smooth: f rises at every step) and on `Wavy` (the step size
halves and iterates tie, so the checkpoint, halving and tie rules decide the result).

Two rules cannot change a K = 10 run and are not observed: condition 2 (every checkpoint gap is
<= 3, so condition 1 fires unless f rose strictly between the checkpoints, which excludes equal
f), and the first comparison keeping x_0 on a tie (it needs f(x_1) == f(x_0) with x_1 != x_0)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtl.attacks import AttackSpec, attack, validate_attack, with_dataset_clean_losses
from mtl.attacks.apgd import APGD
from mtl.attacks.apgd_official import dataset_clean_losses, official_checkpoints
from mtl.attacks.context import AttackContext
from mtl.attacks.objective import Objective
from mtl.attacks.registry import get_objective
from mtl.models import Layout, build_model

SEG, DEPTH = "segment_semantic", "depth_zbuffer"
TASKS = (SEG, DEPTH)
EPS, K = 8, 10
CHECKPOINTS_K10 = [0, 3, 5, 6, 8, 9, 10]  # ceil(p_j * 10), from the issue


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(Layout.branch_point(1, 2), list(TASKS), {SEG: 3}, width=4).double().eval()


class Wavy(torch.nn.Module):
    """A landscape that makes the loop halve its step and meet ties: sin(800 x) oscillates within
    a few steps of eps/K, and each sample's depth saturates once its mean sine reaches 0.5."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = torch.sin(800.0 * x)
        level = s.mean(dim=(1, 2, 3)).clamp(max=0.5)[:, None, None, None]
        seg = torch.stack([3 * s[:, 0], 3 * s[:, 1], 3 * torch.cos(800.0 * x[:, 2])], 1)
        return {SEG: seg, DEPTH: (2.0 + level).expand(-1, 1, *x.shape[2:])}


def make_batch(seed: int, B: int = 3, H: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, 3, (B, H, H), generator=g)
    seg[torch.rand(B, H, H, generator=g) < 0.3] = 255  # ignore labels, uneven per sample
    mask = torch.rand(B, 1, H, H, generator=g) < 0.7
    return {"image": torch.rand(B, 3, H, H, generator=g, dtype=torch.float64), SEG: seg,
            DEPTH: torch.rand(B, 1, H, H, generator=g, dtype=torch.float64) + 1.0,
            DEPTH + "_mask": mask}


# ---- the authors' losses, by hand ---------------------------------------------------------
def per_sample_losses(model, batch, x) -> list[torch.Tensor]:
    """reduction='none': each sample's mean over its valid pixels, per task."""
    out = model(x)
    seg_valid = batch[SEG] != 255
    ce = F.cross_entropy(out[SEG], batch[SEG].clamp_max(2), reduction="none")
    seg = (ce * seg_valid).sum(dim=(1, 2)) / seg_valid.sum(dim=(1, 2))
    mask = batch[DEPTH + "_mask"]
    l1 = (out[DEPTH] - batch[DEPTH]).abs() * mask
    return [seg, l1.sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))]


def pixel_means(model, batch, x) -> list[torch.Tensor]:
    """reduction='mean': one batch mean over all valid pixels, per task."""
    out = model(x)
    mask = batch[DEPTH + "_mask"]
    return [F.cross_entropy(out[SEG], batch[SEG], ignore_index=255),
            (out[DEPTH] - batch[DEPTH])[mask].abs().mean()]


def objective_fns(kind, model, batch, C=None, task=0):
    """(gradient at x, scalar f at x) of the authors' Base / SignSum / MTL attacks."""
    def grad(x):
        x = x.detach().clone().requires_grad_(True)
        if kind in ("total", "single"):
            losses = pixel_means(model, batch, x)
            cost = losses[task] if kind == "single" else losses[0] + losses[1]
            return torch.autograd.grad(cost, x)[0]
        losses, direction = per_sample_losses(model, batch, x), torch.zeros_like(x)
        for t, loss in enumerate(losses):
            g = torch.autograd.grad(loss.mean(), x, retain_graph=t == 0)[0]
            direction += g.sign() if kind == "signsum" else g / loss.detach()[:, None, None, None]
        return direction

    def f(x):
        with torch.no_grad():
            if kind in ("total", "single"):
                losses = pixel_means(model, batch, x)
                if kind == "single":
                    return float(losses[task])
                return float(losses[0]) + float(losses[1])
            value = 0.0
            for t, loss in enumerate(per_sample_losses(model, batch, x)):
                m = loss.mean().item()
                value += m if kind == "signsum" else (m - C[t]) / C[t]
            return value
    return grad, f


def authors_apgd(x_clean, grad, f_of, eps, num_steps, checkpoints):
    """The issue's rules, in the shape of their AutoAttackMatGPU* loops."""
    def proj(v, centre):
        return torch.max(torch.min(v, centre + eps), centre - eps)

    eta = [None] * (num_steps + 1)
    f = [0.0] * (num_steps + 1)
    eta[0] = torch.tensor(eps / num_steps, dtype=x_clean.dtype)
    x = [x_clean, None, None]
    for k in range(num_steps):
        if k == 0:
            x[1] = proj(x[0] + eta[0] * torch.sign(grad(x[0])), x[0]).clamp(0, 1)
            f[0], f[1] = f_of(x[0]), f_of(x[1])
            x_best, f_best = (x[1], f[1]) if f[1] > f[0] else (x[0], f[0])  # first of ties
            eta[1] = eta[0]
            continue
        z = proj(x[1] + eta[k] * torch.sign(grad(x[1])), x_clean)  # no [0, 1] clip here
        x[2] = proj(x[1] + 0.75 * (z - x[1]) + (1 - 0.75) * (x[1] - x[0]), x_clean).clamp(0, 1)
        f[k + 1] = f_of(x[2])
        if f[k + 1] >= f_best:
            x_best = x[2]
        f_best = max(f[k + 1], f_best)
        eta[k + 1] = eta[k]
        if k in checkpoints:
            prev = checkpoints[checkpoints.index(k) - 1]
            grew = sum(1 for i in range(prev, k) if f[i + 1] > f[i])
            cond1 = grew < 0.75 * (k - prev)
            cond2 = bool(eta[prev] == eta[k]) and f[prev] == f[k]
            if cond1 or cond2:
                eta[k + 1] = eta[k] / 2.0
        x[0], x[1] = x[1], x[2]
    return x_best, eta


# ---- tests ---------------------------------------------------------------------------------
def test_checkpoints_for_ten_steps_include_zero():
    assert official_checkpoints(10) == CHECKPOINTS_K10
    # p_j = 0, .22, .41, .57, .70, .80, .87, .93, .99 -- in Python floats p_3 = 0.41 + 0.16 is
    # 0.5700000000000001, so their np.ceil(p * 100) gives 58, not 57
    assert official_checkpoints(100) == [0, 22, 41, 58, 70, 80, 87, 93, 99]
    assert official_checkpoints(1) == [0, 1]


def _ours(model, batch, objective, **options):
    return attack(model, batch, method="apgd", objective=objective, eps=EPS, steps=K,
                  variant="official", **options)


@pytest.mark.parametrize("net", ["resnet", "wavy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["total", "single", "signsum", "dgba", "dgba_batch_c"])
def test_agrees_with_the_transcription_exactly(net, seed, kind):
    if net == "resnet":
        model, batch = make_model(seed), make_batch(seed)
    else:
        model, batch = Wavy(), make_batch(seed, B=2, H=4)
    x0 = batch["image"]
    if kind.startswith("dgba"):
        if kind == "dgba":  # a dataset-level C_t, as the authors pass it
            C = [0.8, 0.6]
            ours = _ours(model, batch, "dgba", clean_losses={SEG: C[0], DEPTH: C[1]})
        else:  # no clean_losses: this batch's clean loss averaged over valid pixels
            with torch.no_grad():
                C = [float(v) for v in pixel_means(model, batch, x0)]
            ours = _ours(model, batch, "dgba")
        grad, f_of = objective_fns("dgba", model, batch, C)
    else:
        single = f"single:{SEG if net == 'resnet' else DEPTH}"
        objective = {"total": "total", "single": single, "signsum": "signsum"}[kind]
        options = {"reduction": "pixel"} if kind != "signsum" else {}
        ours = _ours(model, batch, objective, **options)
        grad, f_of = objective_fns(kind, model, batch, task=0 if net == "resnet" else 1)
    theirs, _ = authors_apgd(x0, grad, f_of, EPS / 255, K, CHECKPOINTS_K10)
    assert not torch.equal(theirs, x0)  # the attack moved
    agree = (ours == theirs).double().mean().item()
    assert agree == 1.0, f"{net} {kind} seed {seed}: {agree:.6f} of pixels agree"


def test_step_size_starts_at_eps_over_steps_and_the_box_comes_last():
    """The second direction is taken at x_1 = clip(P(x_0 + eps/K sign c)): every coordinate moved
    by eps/K unless the box stopped it or its gradient is 0."""
    model, batch = make_model(0), make_batch(0)
    seen = []
    total = get_objective("total")

    def recording(ctx, x):
        seen.append(x.detach().clone())
        return total.direction(ctx, x)

    spy = Objective("total", recording, total.value, option_specs=total.option_specs,
                    needs_clean=False)
    ctx = AttackContext(model, batch, TASKS, batch["image"], EPS / 255, {"reduction": "pixel"})
    runner = APGD(spy, EPS / 255, K, variant="official")
    with torch.enable_grad():
        runner(ctx)
    step = (seen[1] - seen[0]).abs()[(seen[1] > 0) & (seen[1] < 1)]
    moved = (step - EPS / 255 / K).abs() < 1e-12
    assert bool((moved | (step == 0)).all()) and float(moved.double().mean()) > 0.9
    assert float(runner.eta[0]) <= EPS / 255 / K
    assert runner.history_.shape == (K + 1, 3)
    assert bool((runner.history_ == runner.history_[:, :1]).all())  # one value per batch


def test_clean_losses_from_the_evaluation_set():
    model = make_model(0)
    batches = [make_batch(1), make_batch(2)]
    C = dataset_clean_losses(model, batches, TASKS)
    with torch.no_grad():
        means = [pixel_means(model, b, b["image"]) for b in batches]
    assert C[SEG] == pytest.approx((float(means[0][0]) + float(means[1][0])) / 2, rel=1e-12)
    assert C[DEPTH] == pytest.approx((float(means[0][1]) + float(means[1][1])) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="clean_losses: no value"):
        _ours(model, batches[0], "dgba", clean_losses={SEG: 1.0})
    official = {"variant": "official"}
    specs = [AttackSpec("apgd", "dgba", 8, 10, official), AttackSpec("apgd", "total", 8, 10,
                                                                      official),
             AttackSpec("pgd", "dgba", 8, 10), AttackSpec("apgd", "dgba", 8, 10,
                                                          {**official, "clean_losses": C})]
    filled = with_dataset_clean_losses(specs, model, batches, TASKS)
    assert filled[0].options["clean_losses"] == C and filled[3] is specs[3]
    assert filled[1:3] == specs[1:3]
    assert with_dataset_clean_losses(specs[1:3], model, [], TASKS) == specs[1:3]  # no pass


def test_option_rules():
    validate_attack("apgd", "dgba", 8, 10, {"variant": "official", "clean_losses": {SEG: 0.5}})
    for options, words in [({"variant": "paper"}, "option variant"),
                           ({"clean_losses": {SEG: 0.5}}, "only used by variant 'official'"),
                           ({"variant": "official", "clean_losses": {SEG: -1}},
                            "option clean_losses"),
                           ({"variant": "official", "per_sample": False}, "per_sample"),
                           ({"variant": "official", "random_start": True}, "random_start")]:
        with pytest.raises(ValueError, match=words):
            validate_attack("apgd", "dgba", 8, 10, options)


def test_default_variant_is_unchanged():
    model, batch = make_model(0), make_batch(0)
    kw = dict(method="apgd", objective="dgba", eps=EPS, steps=K)
    default = attack(model, batch, **kw)
    assert torch.equal(attack(model, batch, variant="croce_hein", **kw), default)
    assert not torch.equal(attack(model, batch, variant="official", **kw), default)
