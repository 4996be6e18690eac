"""The CPU fast paths under the batched PyTorch loss: the unit gather (dense and through a tap), the analytic
neighbourhood-loss backward (and its exact second derivatives), and the grouping of layers with equal M.

Each is checked against plain autograd over the textbook formulation written here (index gather, strict lower
triangle, Pearson), on fresh random inputs, forward and gradients.
"""
import numpy as np
import pytest
import torch

from tdann_fast.loss import batched, gather, reference
from tdann_fast.loss.functional import layer_losses

from _np_reference import layer_loss as np_layer_loss


# ------------------------------------------------------------------------------------- plain autograd formulation

def plain_neighbourhood_losses(units, unit_positions, variant):
    """(K, M, rows) → (K,) by autograd over the lower triangle (the formulation the fused Function replaces)."""
    k, m, rows = units.shape
    mean = units.mean(-1, keepdim=True)
    xc = units - mean
    var = (xc * xc).sum(-1, keepdim=True) / (rows - 1)
    dead = (var <= (1e-6 * mean) ** 2).detach()
    z = xc / torch.where(dead, torch.ones_like(var), var).sqrt()
    corr = z @ z.transpose(1, 2) / (rows - 1)
    i, j = torch.tril_indices(m, m, -1)
    r = corr[:, i, j].clamp(-1.0, 1.0)
    p = unit_positions.to(units.dtype)
    s = 1.0 / ((p[:, i] - p[:, j]).pow(2).sum(-1).sqrt() + 1.0)
    if variant == "abs":
        return (r - s).abs().mean(-1)
    rc, sc = r - r.mean(-1, keepdim=True), s - s.mean(-1, keepdim=True)
    pr = (rc * sc).sum(-1) / ((rc * rc).sum(-1) * (sc * sc).sum(-1)).clamp_min(1e-30).sqrt()
    return (1.0 - pr) / 2.0


# ------------------------------------------------------------------------------------------------------ gather

@pytest.mark.parametrize("shape", [(5, 37), (3, 6, 10), (3, 4, 5, 6), (4, 3, 2, 5, 3), (2, 64, 56, 56)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("tapped", [False, True])
def test_gather_forward_and_gradient_match_indexing(rng, shape, layout, tapped):
    if layout == "channels_last" and len(shape) < 4:
        pytest.skip("no channels_last below 4-D")
    base = torch.tensor(rng.normal(size=shape))
    if layout == "channels_last":
        base = base.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    x = base[:, : max(1, shape[1] - 1)] if layout == "sliced" else base  # a non-viewable slice
    x = x.detach().requires_grad_()
    b, c = x.shape[:2]
    n = c * int(np.prod(x.shape[3:] if x.dim() == 5 else x.shape[2:]))
    units = torch.tensor(rng.choice(n, size=min(n, 23), replace=False))
    units = torch.cat([units, units[:3]])  # a unit read twice (overlapping neighbourhoods)
    h = x * 1.0
    h = gather.tap(h) if tapped else h
    got = gather.gather_units(h, units)
    want = reference.gather_units(x, units[None])
    assert torch.equal(got, want)
    w = torch.tensor(rng.normal(size=tuple(got.shape)))
    task = torch.tensor(rng.normal(size=tuple(x.shape)))
    (g,) = torch.autograd.grad((got * w).sum() + (h * task).sum(), x)
    (g_want,) = torch.autograd.grad((want * w).sum() + (x * task).sum(), x)
    assert torch.allclose(g, g_want, rtol=0, atol=1e-12)


def test_gather_double_backward(rng):
    x = torch.tensor(rng.normal(size=(4, 3, 5)), requires_grad=True)
    units = torch.tensor([0, 4, 7, 7, 14])
    for tapped in (False, True):
        torch.autograd.gradgradcheck(lambda t: gather.gather_units(gather.tap(t * 1.0) if tapped else t,
                                                                   units).pow(3).sum(), (x,))


# ------------------------------------------------------------------------------------ analytic backward

def _units(rng, k, m, rows, dead=0, duplicate=False):
    u = rng.normal(size=(k, m, rows))
    if dead:
        u[:, :dead] = 0.0
        u[:, dead] = 2.5  # a constant, non-zero unit: dead too
    if duplicate:
        u[:, -1] = u[:, -2] * 3.0 + 1.0  # r = 1 up to rounding: exercises the clamp
    return u


@pytest.mark.parametrize("variant", ["rel", "abs"])
@pytest.mark.parametrize("k,m,rows,dead,duplicate", [
    (1, 2, 5, 0, False),     # one pair
    (3, 9, 3, 0, False),     # B = 3
    (2, 17, 8, 2, True),     # dead units and a (near-)perfectly correlated pair
    (4, 130, 33, 0, True),   # M not a multiple of anything
    (1, 500, 128, 3, False), # the MT preset's M and B
])
def test_fused_matches_autograd_float64(rng, variant, k, m, rows, dead, duplicate):
    u = torch.tensor(_units(rng, k, m, rows, dead, duplicate))
    pos = torch.tensor(rng.uniform(0, 5, size=(k, m, 2)))
    ua, ub = u.clone().requires_grad_(), u.clone().requires_grad_()
    got = batched.neighbourhood_losses(ua, pos, variant)
    want = plain_neighbourhood_losses(ub, pos, variant)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    w = torch.tensor(rng.normal(size=k))
    (ga,) = torch.autograd.grad((got * w).sum(), ua)
    (gb,) = torch.autograd.grad((want * w).sum(), ub)
    scale = gb.abs().max().clamp_min(1e-30)
    assert ((ga - gb).abs().max() / scale) < 1e-9


@pytest.mark.parametrize("variant", ["rel", "abs"])
def test_fused_float32_error_within_twice_plain(rng, variant):
    """In float32 the fused path is as accurate as plain autograd in float32 (the project's 2x rule)."""
    u64 = torch.tensor(_units(rng, 3, 200, 64, dead=1))
    pos = torch.tensor(rng.uniform(0, 5, size=(3, 200, 2)))
    ref = u64.clone().requires_grad_()
    loss_ref = plain_neighbourhood_losses(ref, pos, variant)
    (g_ref,) = torch.autograd.grad(loss_ref.sum(), ref)
    errors = {}
    for name, fn in [("fused", batched.neighbourhood_losses), ("plain", plain_neighbourhood_losses)]:
        u32 = u64.float().requires_grad_()
        loss = fn(u32, pos.float(), variant)
        (g,) = torch.autograd.grad(loss.sum(), u32)
        errors[name] = ((loss.double() - loss_ref).abs().max().item(), (g.double() - g_ref).abs().max().item())
    for which in range(2):
        assert errors["fused"][which] <= 2 * errors["plain"][which] + 1e-6, errors


@pytest.mark.parametrize("variant", ["rel", "abs"])
def test_second_derivatives_match_finite_differences(rng, variant):
    """create_graph=True through the fast path gives exact second derivatives (the reference's), checked against
    finite differences; and a gradient penalty through the tapped gather agrees with the plain reference's."""
    u = torch.tensor(_units(rng, 2, 6, 5), requires_grad=True)  # (dead units are not differentiable points)
    pos = torch.tensor(rng.uniform(0, 3, size=(2, 6, 2)))
    if variant == "rel":
        torch.autograd.gradgradcheck(lambda t: batched.neighbourhood_losses(t, pos, variant), (u,))
    x = torch.tensor(rng.normal(size=(5, 3, 4)), requires_grad=True)
    p = torch.tensor(rng.uniform(0, 2, size=(12, 2)))
    nb = torch.tensor(np.stack([rng.choice(12, 7, replace=False) for _ in range(2)]))

    def penalty(fn):
        (g,) = torch.autograd.grad(fn(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        return gg

    fast = penalty(lambda: layer_losses([gather.tap(x * 1.0)], [p], [nb], variant, "mean", "torch").sum())
    plain = penalty(lambda: reference.layer_loss(x, p, nb, variant, "mean"))
    assert torch.allclose(fast, plain, rtol=1e-9, atol=1e-12) and fast.abs().max() > 0


# ------------------------------------------------------------------------------------------- layer grouping

@pytest.mark.parametrize("time_reduction", ["mean", "flatten", "dual"])
@pytest.mark.parametrize("chunk", ["one call", "chunked"])
def test_grouped_layers_equal_one_by_one(rng, monkeypatch, time_reduction, chunk):
    """Layers with equal (M, rows) share batched calls (whole, or in chunks of neighbourhoods); the result equals
    each layer alone and the NumPy reference."""
    if chunk == "chunked":
        monkeypatch.setattr(batched, "GROUP_MATRIX_ELEMENTS", 300)  # 2 neighbourhoods of M = 12 per call
    shapes = [(5, 3, 4, 6, 6), (5, 6, 4, 3, 3), (5, 4, 4, 5, 5), (5, 40)]  # 5-D, 5-D, 5-D, flat
    ms = [12, 12, 12, 7]
    feats, positions, nbs = [], [], []
    for shape, m in zip(shapes, ms):
        n = shape[1] * (shape[3] * shape[4] if len(shape) == 5 else 1)
        feats.append(torch.tensor(rng.normal(size=shape), requires_grad=True))
        positions.append(torch.tensor(rng.uniform(0, 4, size=(n, 2))))
        nbs.append(torch.tensor(np.stack([rng.choice(n, m, replace=False) for _ in range(2 + len(nbs))])))
    together = layer_losses(feats, positions, nbs, "rel", time_reduction, "torch")
    alone = torch.stack([reference.layer_loss(f, p, nb, "rel", time_reduction) for f, p, nb in
                         zip(feats, positions, nbs)])
    assert torch.allclose(together, alone, rtol=0, atol=1e-12)
    for value, f, p, nb in zip(together, feats, positions, nbs):
        want = np_layer_loss(f.detach().numpy(), p.numpy(), nb.numpy(), "rel", time_reduction)
        assert value.item() == pytest.approx(want, abs=1e-10)
    g_together = torch.autograd.grad(together.sum(), feats)
    g_alone = torch.autograd.grad(alone.sum(), feats)
    for a, b in zip(g_together, g_alone):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
