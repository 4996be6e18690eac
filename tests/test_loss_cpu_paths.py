"""The CPU fast paths under the batched PyTorch loss: the sparse-aware unit gather (and its recycled gradient blocks),
the analytic neighbourhood-loss backward, and the grouping of layers with equal M.

Each is checked against plain autograd over the textbook formulation written here (index gather, strict lower
triangle, Pearson), on fresh random inputs, forward and gradients.
"""
import gc

import numpy as np
import pytest
import torch

from tdann_fast.loss import gather, reference
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


def plain_gather(features, neighbourhoods):
    b = features.shape[0]
    if features.dim() == 5:
        _, c, t, h, w = features.shape
        flat = features.permute(0, 2, 1, 3, 4).reshape(b, t, c * h * w)
        return flat[:, :, neighbourhoods.reshape(-1)].permute(2, 0, 1)  # (K·M, B, T)
    return features.reshape(b, -1)[:, neighbourhoods.reshape(-1)].t()[..., None]


# ------------------------------------------------------------------------------------------------------ gather

@pytest.mark.parametrize("shape", [(5, 37), (3, 4, 5, 6), (4, 3, 2, 5, 3), (2, 64, 56, 56)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_gather_forward_and_gradient_match_indexing(rng, shape, layout):
    if layout == "channels_last" and len(shape) == 2:
        pytest.skip("no channels_last for 2-D")
    base = torch.tensor(rng.normal(size=shape))
    if layout == "channels_last":
        base = base.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    x = base[:, : max(1, shape[1] - 1)] if layout == "sliced" else base  # a non-viewable slice
    n = x.shape[1] * int(np.prod(x.shape[3:] if x.dim() == 5 else x.shape[2:]))
    nb = torch.tensor(rng.integers(0, n, size=(3, min(11, n))))  # repeated units across (and within) rows
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    b, c, t, hw = xa.shape[0], xa.shape[1], (xa.shape[2] if xa.dim() == 5 else 1), n // xa.shape[1]
    got = gather.gather_units_flat(xa, nb.reshape(-1), c, t, hw).permute(1, 0, 2)
    want = plain_gather(xb, nb)
    assert torch.equal(got, want)
    weights = torch.tensor(rng.normal(size=want.shape))
    (ga,) = torch.autograd.grad((got * weights).sum(), xa)
    (gb,) = torch.autograd.grad((want * weights).sum(), xb)
    assert ga.shape == x.shape
    assert torch.allclose(ga, gb, rtol=0, atol=1e-12)


def test_gather_double_backward(rng):
    x = torch.tensor(rng.normal(size=(4, 3, 5)), requires_grad=True)
    nb = torch.tensor([[0, 4, 7, 14], [2, 4, 9, 11]])
    units = gather.gather_units_flat(x, nb.reshape(-1), 3, 1, 5)
    (g,) = torch.autograd.grad((units ** 3).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    xd = x.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad((plain_gather(xd, nb) ** 3).sum(), xd, create_graph=True)
    (gg2,) = torch.autograd.grad(g2.sum(), xd)
    assert torch.allclose(gg, gg2)


# ---------------------------------------------------------------------------------- recycled gradient blocks

@pytest.fixture(params=["zero_", "memset"])
def small_cache(request, monkeypatch):
    """Route 1 KiB+ blocks through a fresh cache so the test needs no large tensors; reused blocks are cleared
    with torch's zero_ or (as large blocks are) with the C library's memset."""
    cache = gather.CpuBlockCache(limit_bytes=1 << 20)
    monkeypatch.setattr(gather, "MIN_CACHED_BYTES", 1024)
    monkeypatch.setattr(gather, "MEMSET_MIN_BYTES", 1024 if request.param == "memset" else 1 << 40)
    monkeypatch.setattr(gather, "_CACHE", [cache])
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cached_blocks_are_zero_and_never_aliased(small_cache, dtype):
    a = gather.zeros_for_gradient((8, 100), dtype, "cpu")
    assert a.dtype == dtype and a.shape == (8, 100) and a.is_contiguous() and not a.any()
    a.fill_(3.0)
    b = gather.zeros_for_gradient((8, 100), dtype, "cpu")  # `a` is alive: a new block
    assert b.data_ptr() != a.data_ptr() and not b.any()
    ptr = a.data_ptr()
    del a
    gc.collect()
    c = gather.zeros_for_gradient((8, 100), dtype, "cpu")  # `a`'s dirty block, cleared
    assert c.data_ptr() == ptr and not c.any()
    assert small_cache.reused == 1 and small_cache.allocated == 2
    view = c[2:4]  # a view keeps the block in use
    del c
    gc.collect()
    d = gather.zeros_for_gradient((8, 100), dtype, "cpu")
    assert d.data_ptr() != ptr
    view.fill_(1.0)
    assert not d.any()


def test_cache_limit_and_empty_cache(monkeypatch):
    monkeypatch.setattr(gather, "MIN_CACHED_BYTES", 1024)
    cache = gather.CpuBlockCache(limit_bytes=0)  # reuse disabled
    monkeypatch.setattr(gather, "_CACHE", [cache])
    a = gather.zeros_for_gradient((4, 1000), torch.float32, "cpu")
    del a
    gc.collect()
    gather.zeros_for_gradient((4, 1000), torch.float32, "cpu")
    assert cache.reused == 0 and cache.allocated == 2
    cache.limit_bytes = 1 << 20
    a = gather.zeros_for_gradient((4, 1000), torch.float32, "cpu")
    del a
    gc.collect()
    gather.empty_cache()
    gather.zeros_for_gradient((4, 1000), torch.float32, "cpu")
    assert cache.reused == 0


def test_cache_limit_environment_variable(monkeypatch):
    monkeypatch.setattr(gather, "_CACHE", [])
    monkeypatch.setenv(gather.CACHE_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=gather.CACHE_LIMIT_ENV):
        gather._cache()
    monkeypatch.setenv(gather.CACHE_LIMIT_ENV, "16")
    assert gather._cache().limit_bytes == 16 << 20


def test_loss_gradient_through_cached_blocks_matches_dense(rng, small_cache):
    """Two backward passes in a row: the second reuses the first's (dirtied) blocks and must be unaffected."""
    x = torch.tensor(rng.normal(size=(6, 4, 7, 7)), requires_grad=True)
    pos = torch.tensor(rng.uniform(0, 3, size=(196, 2)))
    nb = torch.tensor(np.stack([rng.choice(196, 20, replace=False) for _ in range(2)]))
    grads = []
    for _ in range(3):
        (g,) = torch.autograd.grad(layer_losses([x], [pos], [nb], "rel", "mean", "torch").sum(), x)
        grads.append(g.clone())
        g.fill_(123.0)  # the caller scribbles on the gradient, then drops it
        del g
        gc.collect()
    assert small_cache.reused >= 2
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[1], grads[2])
    xd = x.detach().clone().requires_grad_()
    units = plain_gather(xd, nb).mean(-1).reshape(2, 20, 6)
    (want,) = torch.autograd.grad(plain_neighbourhood_losses(units, pos[nb], "rel").mean(), xd)
    assert torch.allclose(grads[0], want, rtol=1e-9, atol=1e-12)


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
    got = reference.neighbourhood_losses(ua, pos, variant)
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
    for name, fn in [("fused", reference.neighbourhood_losses), ("plain", plain_neighbourhood_losses)]:
        u32 = u64.float().requires_grad_()
        loss = fn(u32, pos.float(), variant)
        (g,) = torch.autograd.grad(loss.sum(), u32)
        errors[name] = ((loss.double() - loss_ref).abs().max().item(), (g.double() - g_ref).abs().max().item())
    for which in range(2):
        assert errors["fused"][which] <= 2 * errors["plain"][which] + 1e-6, errors


def test_fused_rejects_double_backward(rng):
    u = torch.tensor(_units(rng, 1, 6, 5), requires_grad=True)
    (g,) = torch.autograd.grad(reference.neighbourhood_losses(u, torch.rand(1, 6, 2, dtype=torch.float64)).sum(), u,
                               create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


# ------------------------------------------------------------------------------------------- layer grouping

@pytest.mark.parametrize("time_reduction", ["mean", "flatten", "dual"])
@pytest.mark.parametrize("chunk", ["one call", "chunked"])
def test_grouped_layers_equal_one_by_one(rng, monkeypatch, time_reduction, chunk):
    """Layers with equal (M, rows) share batched calls (whole, or in chunks of neighbourhoods); the result equals
    each layer alone and the NumPy reference."""
    if chunk == "chunked":
        monkeypatch.setattr(reference, "GROUP_MATRIX_ELEMENTS", 300)  # 2 neighbourhoods of M = 12 per call
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
