"""SAM / RFN step: exact reduction at rho = 0, the textbook update, BN stats updated once."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl.train.sam import SAMStep


class TinyNet(nn.Module):
    """conv-BN-ReLU trunk ("shared") and a linear head; enough to exercise SAM with BN."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).mean(dim=(2, 3)))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())



def _data(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randn(n, 2, generator=g)


def _make(opt: str, seed: int = 1) -> tuple[TinyNet, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyNet()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    return model, optimizer


def _closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_rho_zero_equals_base_optimizer_exactly(opt: str) -> None:
    plain, plain_opt = _make(opt)
    sam_model, sam_opt = _make(opt)
    sam = SAMStep(sam_model, sam_opt, rho=0.0)
    for step in range(5):
        x, y = _data(step)
        plain_opt.zero_grad()
        _closure(plain, x, y)().backward()
        plain_opt.step()
        sam.step(_closure(sam_model, x, y))
    for (name, a), b in zip(plain.state_dict().items(), sam_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("shared_only", [False, True])
def test_step_matches_manual_sam(opt: str, shared_only: bool) -> None:
    """One step equals: g at w, eps = rho g/||g|| (one global norm), g' at w+eps, step from w."""
    rho = 0.3
    x, y = _data(3)
    model, optimizer = _make(opt)
    ref, ref_opt = _make(opt)
    perturbed = model.shared_parameters() if shared_only else None
    SAMStep(model, optimizer, rho, perturb_params=perturbed).step(_closure(model, x, y))

    names = [n for n, _ in ref.named_parameters()]
    params = [p for _, p in ref.named_parameters()]
    chosen = [n.startswith("trunk") or not shared_only for n in names]
    grads = torch.autograd.grad(_closure(ref, x, y)(), params)
    norm = torch.sqrt(sum((g ** 2).sum() for g, c in zip(grads, chosen) if c))
    bn_before = {k: v.clone() for k, v in ref.trunk[1].named_buffers()}
    w0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g, c in zip(params, grads, chosen):
            if c:
                p.add_(rho * g / norm)
    ref_opt.zero_grad()
    _closure(ref, x, y)().backward()
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
        for k, v in ref.trunk[1].named_buffers():  # the reference's 2nd pass moved the stats
            v.copy_(bn_before[k])
    # the first pass of the reference (autograd.grad) updated the BN stats once, like SAMStep
    ref_opt.step()
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_perturbation_changes_the_update() -> None:
    x, y = _data(4)
    a, a_opt = _make("sgd")
    b, b_opt = _make("sgd")
    SAMStep(a, a_opt, rho=0.0).step(_closure(a, x, y))
    SAMStep(b, b_opt, rho=0.5).step(_closure(b, x, y))
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff > 1e-4


def test_batchnorm_running_stats_updated_once_per_step() -> None:
    x, y = _data(5)
    model, optimizer = _make("sgd")
    bn = model.trunk[1]
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(bn.state_dict())
    with torch.no_grad():  # the stats one plain training forward at w would produce
        ref.train()
        ref(model.trunk[0](x))
    SAMStep(model, optimizer, rho=0.5).step(_closure(model, x, y))
    assert int(bn.num_batches_tracked) == 1
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-7)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-7)


def test_weights_restored_before_base_step() -> None:
    """With lr = 0 the base step is a no-op, so the weights must come back bit-for-bit."""
    x, y = _data(6)
    torch.manual_seed(1)
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = SAMStep(model, opt, rho=2.0).step(_closure(model, x, y))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert loss.requires_grad is False and torch.isfinite(loss)


def test_bad_rho_raises() -> None:
    model, opt = _make("sgd")
    with pytest.raises(ValueError, match="rho"):
        SAMStep(model, opt, rho=-0.1)
