"""Numerics at the edges: float32 activations of extreme magnitude, and complex inputs (DESIGN §8).

* Pearson correlations are scale-invariant, so the spatial loss of float32 activations X·1e19 or X·1e-22 must equal
  the float64 loss of X, and their gradient times the scale must equal the float64 gradient of X (at live units; a
  dead unit has std := 1, so its gradient does not scale). Before the scale-safe standardisation, (x - mean)²
  overflowed (1e19) or underflowed (1e-22) in float32 and the dead-unit test underflowed with it.
* Complex values are refused with a TypeError naming the argument, instead of a warning and a cast that drops the
  imaginary part.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tdann_fast import CorticalSheet, SpatialLoss, spatial_correlation_loss
from tdann_fast._validation import check_not_complex, check_positions, check_positive
from tdann_fast.loss import batched, reference
from tdann_fast.loss.triton_ops import KernelConfig, fused_spatial_loss, triton_unavailable_reason
from tdann_fast.sheet import sample_neighbourhoods
from tdann_fast.swap import optimize_positions

from _np_reference import layer_loss as np_layer_loss

SMALL = KernelConfig(block_m=16, block_r=16, scatter_block_r=16)  # M = 21 spans two 16-unit tiles
SCALES = (1e19, 1e-22)
DEAD = (0, 13)  # a unit that is constant 2.5 (non-zero: its float32 mean can miss by an ulp) and one that is 0
TRITON_SKIP = pytest.mark.skipif(triton_unavailable_reason(torch.device("cpu")) is not None,
                                 reason="Triton interpreter not active (TRITON_INTERPRET=1 is set by conftest)")


# ------------------------------------------------------------------------------------------- extreme magnitudes

def _smooth_layer(rng, batch=6, c=3, t=2, hw=(3, 3), m=21):
    """(B, C, T, H, W) activations whose units correlate with their neighbours on the sheet (so the loss is far
    from the 0.5 of uncorrelated units), two dead units, and one neighbourhood of M = 21 holding both."""
    h, w = hw
    n = c * h * w
    pos = rng.uniform(0.0, 3.0, size=(n, 2))
    centres = rng.uniform(0.0, 3.0, size=(6, 2))
    bumps = np.exp(-((pos[:, None, :] - centres[None]) ** 2).sum(-1))  # (N, 6)
    field = np.einsum("btj,nj->btn", rng.standard_normal((batch, t, 6)), bumps)
    x = field + 0.1 * rng.standard_normal((batch, t, n))
    x[:, :, DEAD[0]] = 2.5
    x[:, :, DEAD[1]] = 0.0
    x = x.reshape(batch, t, c, h, w).transpose(0, 2, 1, 3, 4).copy()  # units in C·H·W order
    others = rng.permutation(np.setdiff1d(np.arange(n), DEAD))[: m - 2]
    nb = np.sort(np.concatenate([DEAD, others]))[None, :]
    return x, pos, nb


def _float64_truth(x, pos, nb, variant, mode):
    x64 = torch.tensor(x, requires_grad=True)
    loss = reference.layer_loss(x64, torch.tensor(pos), torch.tensor(nb), variant, mode)
    assert loss.item() == pytest.approx(np_layer_loss(x, pos, nb, variant, mode), abs=1e-10)
    (grad,) = torch.autograd.grad(loss, x64)
    return loss.item(), grad


def _fp32_loss_and_grad(x, pos, nb, variant, mode, backend, scale):
    x32 = torch.tensor(x * scale, dtype=torch.float32, requires_grad=True)
    p32, nbt = torch.tensor(pos, dtype=torch.float32), torch.tensor(nb)
    if backend == "torch":
        loss = spatial_correlation_loss(x32, p32, nbt, variant=variant, time_reduction=mode, backend="torch")
    else:
        loss = fused_spatial_loss([x32], [p32], [nbt], variant, mode, config=SMALL)[0]
    (grad,) = torch.autograd.grad(loss, x32)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    return loss.item(), grad.double()


def _errors(loss, grad, scale, want_loss, want_grad, dead):
    """Loss error, and gradient errors relative to the largest entry, at live units (× scale) and dead units."""
    live = ~dead
    e_live = (grad[live] * scale - want_grad[live]).abs().max() / want_grad[live].abs().max()
    e_dead = (grad[dead] - want_grad[dead]).abs().max() / want_grad[dead].abs().max()
    return abs(loss - want_loss), e_live.item(), e_dead.item()


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=TRITON_SKIP)])
@pytest.mark.parametrize("variant", ["rel", "abs"])
def test_extreme_magnitudes_give_the_float64_loss_of_unit_scale(rng, backend, variant):
    mode = "dual"  # both time modes: time-mean rows (B = 6) and flattened rows (B·T = 12)
    x, pos, nb = _smooth_layer(rng)
    want_loss, want_grad = _float64_truth(x, pos, nb, variant, mode)
    if variant == "rel":
        assert abs(want_loss - 0.5) > 0.03, want_loss  # far from the loss of uncorrelated units (0.5)
    b, c, t, h, w = x.shape
    dead_unit = torch.zeros(c * h * w, dtype=torch.bool)
    dead_unit[list(DEAD)] = True
    dead = dead_unit.reshape(1, c, 1, h, w).expand(b, c, t, h, w)
    assert want_grad[dead].abs().max() > 0  # dead units get a (non-scaling) gradient: std := 1
    # yardstick: the same float32 path at scale 1 (the project's rule: at most 2x that error plus a small epsilon)
    base = _errors(*_fp32_loss_and_grad(x, pos, nb, variant, mode, backend, 1.0), 1.0, want_loss, want_grad, dead)
    for scale in SCALES:
        got = _errors(*_fp32_loss_and_grad(x, pos, nb, variant, mode, backend, scale), scale, want_loss, want_grad,
                      dead)
        limits = (2 * base[0] + 2e-6, 2 * base[1] + 2e-5, 2 * base[2] + 2e-5)
        assert all(g <= lim for g, lim in zip(got, limits)), (scale, got, limits, base)


@pytest.mark.parametrize("scale", SCALES)
def test_extreme_magnitudes_neighbourhood_losses(rng, scale):
    """The batched CPU kernel on (K, M, rows) units directly, B = 3 and M = 2, 9: values and live-unit gradients."""
    for k, m, rows in ((3, 9, 3), (2, 2, 5), (2, 30, 7)):
        u = rng.standard_normal((k, m, rows)) + rng.standard_normal((k, 1, rows))  # correlated units
        u[:, 0] = 2.5 * (1 + np.arange(k))[:, None]  # constant, non-zero: dead
        pos = torch.tensor(rng.uniform(0, 2, size=(k, m, 2)))
        for variant in ("rel", "abs"):
            u64 = torch.tensor(u, requires_grad=True)
            want = reference.neighbourhood_losses(u64, pos, variant)
            (g_want,) = torch.autograd.grad(want.sum(), u64)
            u32 = torch.tensor(u * scale, dtype=torch.float32, requires_grad=True)
            got = reference.neighbourhood_losses(u32, pos.float(), variant)
            (g_got,) = torch.autograd.grad(got.sum(), u32)
            assert torch.allclose(got.double(), want, rtol=0, atol=2e-6), (variant, got, want)
            live = slice(1, None)
            err = (g_got[:, live].double() * scale - g_want[:, live]).abs().max()
            assert err <= 1e-4 * g_want[:, live].abs().max() + 1e-12, (variant, k, m, err)


def _near_constant_layer(rel_std):
    """Four units over 6 rows: unit 0 = 1 + noise with std = rel_std·mean, unit 1 its (live) twin, two others."""
    base = np.array([1.0, -1.0, 1.0, -1.0, 0.0, 0.0])
    x = np.zeros((6, 4))
    x[:, 0] = 1.0 + rel_std * base / base.std(ddof=1)
    x[:, 1] = base
    x[:, 2] = [0.3, -1.2, 0.5, 2.0, -0.7, 0.1]
    x[:, 3] = [1.1, 0.4, -0.9, 0.2, 0.8, -1.5]
    return x


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=TRITON_SKIP)])
def test_dead_unit_rule_holds_at_extreme_scales(backend):
    """std <= 1e-6·|mean| is dead, std = 1e-5·|mean| is live (correlation ~1 with its twin), at every scale: the
    dead-unit test itself must neither underflow (1e-22: everything looked dead) nor overflow (1e19).

    The float32 loss equals the float64 loss of the same (float32-rounded) input. A dead unit keeps std := 1, so its
    centred responses stay in the units of the input: its correlations are ~0 where those are small (scale 1 and
    1e-22; checked against np.corrcoef), while at 1e19 they are clamped to ±1 by that definition."""
    pos = torch.tensor([[0.0, 0.0], [0.1, 0.0], [2.0, 0.0], [0.0, 3.0]])
    nb = torch.tensor([[0, 1, 2, 3]])
    ii, jj = np.tril_indices(4, -1)
    s = 1.0 / (torch.cdist(pos.double(), pos.double()).numpy() + 1.0)
    flags = []
    for scale in (1.0, 1e19, 1e-22):
        for rel_std, want_dead in ((1e-5, False), (1e-7, True)):
            xt = torch.tensor(_near_constant_layer(rel_std) * scale, dtype=torch.float32)
            if backend == "torch":
                loss = spatial_correlation_loss(xt, pos, nb, "abs", backend="torch")
            else:
                loss = fused_spatial_loss([xt], [pos], [nb], "abs", "mean", config=SMALL)[0]
            want = reference.layer_loss(xt.double(), pos.double(), nb, "abs", "mean").item()
            assert loss.item() == pytest.approx(want, abs=1e-5), (scale, rel_std)
            if not (want_dead and scale > 1):
                r = np.corrcoef(xt.double().numpy().T)
                if want_dead:
                    r[0, :] = r[:, 0] = 0.0
                assert want == pytest.approx(np.abs(np.clip(r, -1, 1)[ii, jj] - s[ii, jj]).mean(), abs=1e-6)
            flags.append(((scale, rel_std), xt, want_dead))
    for where, xt, want_dead in flags:  # the dead flag of the float32 standardisation itself
        _, _, dead = batched._standardise(xt.T[None])
        assert dead[0, :, 0].tolist() == [want_dead, False, False, False], where


# ------------------------------------------------------------------------------------------------ complex inputs

def test_check_not_complex_helper():
    for value in (torch.zeros(3, dtype=torch.complex64), np.zeros(3, dtype=np.complex128), [1.0, 2j], 1j,
                  np.complex64(1)):
        with pytest.raises(TypeError, match="values must hold real numbers, got complex"):
            check_not_complex(value, "values")
    for value in (torch.zeros(3), np.zeros(3, dtype=np.int64), [1.0, 2.0], 3.0, None, "text"):
        assert check_not_complex(value, "values") is value


def _refused(fn, name):
    """``fn()`` raises a TypeError naming ``name`` and emits no ComplexWarning on the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match=rf"{name} must hold real numbers, got complex"):
            fn()


def test_complex_positions_are_refused(rng):
    pos = rng.uniform(0, 2, size=(12, 2)) + 0j
    pos_t = torch.tensor(pos)
    _refused(lambda: check_positions(pos, "positions"), "positions")
    _refused(lambda: CorticalSheet(pos_t, 2.0, 1.0, torch.tensor([[0, 1, 2]])), "positions")
    _refused(lambda: sample_neighbourhoods(pos, 2.0, 1.0), "positions")
    _refused(lambda: check_positive(np.complex128(2.0), "side_mm"), "side_mm")
    _refused(lambda: CorticalSheet.retinotopic(4, 3, 3, 2.0, 1.0, jitter=np.complex128(0.1)), "jitter")
    sheet = CorticalSheet(pos.real, 2.0, 1.0, torch.tensor([[0, 1, 2]]))
    _refused(lambda: sheet.with_positions(pos_t), "positions")
    loss = SpatialLoss({"a": sheet}, backend="torch")
    _refused(lambda: loss.set_positions("a", pos_t), "positions")
    x = torch.randn(4, 12)
    _refused(lambda: spatial_correlation_loss(x, pos_t, torch.tensor([[0, 1, 2]])), "positions")


def test_complex_activations_are_refused(rng):
    pos = torch.rand(12, 2)
    nb = torch.tensor([[0, 1, 2, 3]])
    xc = torch.randn(4, 12, dtype=torch.complex64)
    _refused(lambda: spatial_correlation_loss(xc, pos, nb, backend="torch"), "features")
    sheet = CorticalSheet(pos, 1.0, 0.5, nb)
    _refused(lambda: SpatialLoss({"a": sheet}, backend="torch")({"a": xc}), r"features\['a'\]")
    _refused(lambda: fused_spatial_loss([xc], [pos], [nb], "rel", "mean"), r"features\[0\]")
    _refused(lambda: reference.neighbourhood_losses(xc.T[None, :4], pos[None, :4]), "units")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_complex_swap_inputs_are_refused(rng, kind):
    resp = rng.standard_normal((8, 30)) + 1j * rng.standard_normal((8, 30))
    pos = rng.uniform(0, 3, size=(30, 2))
    convert = torch.tensor if kind == "torch" else np.asarray
    _refused(lambda: optimize_positions(convert(resp), convert(pos), 1.0, 10, backend="reference",
                                        progress=False), "responses")
    _refused(lambda: optimize_positions(convert(resp.real), convert(pos + 0j), 1.0, 10, backend="reference",
                                        progress=False), "positions")
    _refused(lambda: optimize_positions(convert(resp.real), convert(pos), np.complex128(1.0), 10,
                                        backend="reference", progress=False), "neighbourhood_width_mm")
    _refused(lambda: optimize_positions(convert(resp.real), convert(pos), 1.0, 10, backend="reference",
                                        progress=False, side_mm=np.complex128(3.0)), "side_mm")


def test_complex_tuning_inputs_are_refused(rng):
    from tdann_fast.analysis.tuning import curve_fwhm, fit_von_mises, population_tuning_curve, tuning_metrics

    dirs = np.arange(16) * 2 * np.pi / 16
    resp = rng.uniform(0, 1, size=(5, 16)) + 0.5j
    _refused(lambda: tuning_metrics(resp, dirs), "responses")
    _refused(lambda: tuning_metrics(resp.real, dirs + 0j), "directions")
    _refused(lambda: fit_von_mises(resp, dirs), "responses")
    _refused(lambda: population_tuning_curve(resp), "responses")
    _refused(lambda: curve_fwhm(resp[0], 22.5), "curve")
