"""The batched PyTorch spatial loss against an independent float64 NumPy implementation (DESIGN §3)."""
import numpy as np
import pytest
import torch

from tdann_fast import spatial_correlation_loss
from tdann_fast.loss import reference

from _np_reference import layer_loss as np_layer_loss

SHAPES = {
    "flat": (6, 30),
    "2d": (5, 3, 4, 5),
    "3d": (4, 3, 3, 4, 4),
}


def _inputs(rng, shape, k=3, m=9):
    x = rng.normal(size=shape)
    n = int(np.prod(shape[1:])) if len(shape) != 5 else shape[1] * shape[3] * shape[4]
    positions = rng.uniform(0.0, 4.0, size=(n, 2))
    nb = np.stack([rng.choice(n, size=m, replace=False) for _ in range(k)])
    return x, positions, nb


@pytest.mark.parametrize("variant", ["rel", "abs"])
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("time_reduction", ["mean", "flatten", "dual"])
def test_matches_numpy_reference(rng, variant, kind, time_reduction):
    x, positions, nb = _inputs(rng, SHAPES[kind])
    expected = np_layer_loss(x, positions, nb, variant, time_reduction)
    got = spatial_correlation_loss(
        torch.tensor(x), torch.tensor(positions), torch.tensor(nb), variant=variant, time_reduction=time_reduction
    )
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, abs=1e-10, rel=1e-10)
    got32 = spatial_correlation_loss(
        torch.tensor(x, dtype=torch.float32), torch.tensor(positions), torch.tensor(nb), variant=variant,
        time_reduction=time_reduction,
    )
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize("variant", ["rel", "abs"])
@pytest.mark.parametrize("kind,time_reduction", [("flat", "mean"), ("2d", "mean"), ("3d", "mean"), ("3d", "flatten"),
                                                  ("3d", "dual")])
def test_gradcheck_float64(rng, variant, kind, time_reduction):
    shape = {"flat": (4, 12), "2d": (3, 3, 2, 2), "3d": (3, 2, 2, 2, 3)}[kind]
    x, positions, nb = _inputs(rng, shape, k=2, m=6)
    xt = torch.tensor(x, requires_grad=True)
    pos, nbt = torch.tensor(positions), torch.tensor(nb)

    def f(inp):
        return spatial_correlation_loss(inp, pos, nbt, variant=variant, time_reduction=time_reduction)

    assert torch.autograd.gradcheck(f, (xt,), eps=1e-6, atol=1e-6)


def test_gradient_only_on_sampled_units(rng):
    x, positions, nb = _inputs(rng, (6, 40), k=1, m=8)
    xt = torch.tensor(x, requires_grad=True)
    spatial_correlation_loss(xt, torch.tensor(positions), torch.tensor(nb)).backward()
    touched = xt.grad.abs().sum(0) > 0
    assert set(np.flatnonzero(touched.numpy())) <= set(nb[0].tolist())
    assert touched.any()


@pytest.mark.parametrize("variant", ["rel", "abs"])
def test_dead_units_and_batch_of_three(rng, variant):
    x, positions, nb = _inputs(rng, (3, 5, 2, 2), k=2, m=10)
    x = np.maximum(x, 0.0)
    dead_units = nb[0, :3]
    x.reshape(3, -1)[:, dead_units] = 0.0  # dead ReLU units
    xt = torch.tensor(x, requires_grad=True)
    loss = spatial_correlation_loss(xt, torch.tensor(positions), torch.tensor(nb), variant=variant)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(np_layer_loss(x, positions, nb, variant), abs=1e-10)
    loss.backward()
    assert torch.isfinite(xt.grad).all()
    # Finite differences would revive a dead unit, so check the gradient over the live entries only.
    dead_columns = torch.tensor((x.reshape(3, -1) == 0).all(axis=0))  # the planted ones and any ReLU-dead unit
    live = (~dead_columns).expand(3, -1).reshape(x.shape).clone()
    live_values = torch.tensor(x)[live].requires_grad_()

    def f(values):
        full = torch.zeros(x.shape, dtype=torch.float64).masked_scatter(live, values)
        return spatial_correlation_loss(full, torch.tensor(positions), torch.tensor(nb), variant=variant)

    assert torch.autograd.gradcheck(f, (live_values,))


def test_all_units_dead_gives_half_and_zero_grad():
    x = torch.zeros(4, 10, dtype=torch.float64, requires_grad=True)
    pos = torch.rand(10, 2, dtype=torch.float64)
    loss = spatial_correlation_loss(x, pos, torch.arange(10), check_inputs=True)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_constant_nonzero_unit_is_dead(rng):
    x = rng.normal(size=(8, 6))
    x[:, 2] = 3.7  # constant: mean - value may not be exactly 0 in floating point
    pos = rng.uniform(0, 2, size=(6, 2))
    got = spatial_correlation_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(pos), torch.arange(6))
    assert got.item() == pytest.approx(np_layer_loss(x, pos, np.arange(6)), abs=2e-5)


def test_single_pair_definition(rng):
    """M = 2: one pair. SL_rel is defined as 0.5 (r = 0) with zero gradient; SL_abs is |R - S| of the pair."""
    x, positions, _ = _inputs(rng, (6, 5), m=2)
    xt = torch.tensor(x, requires_grad=True)
    nb = torch.tensor([1, 3])
    rel = spatial_correlation_loss(xt, torch.tensor(positions), nb, variant="rel")
    assert rel.item() == pytest.approx(0.5)
    rel.backward()
    assert torch.count_nonzero(xt.grad) == 0
    r = np.corrcoef(x[:, 1], x[:, 3])[0, 1]
    s = 1.0 / (np.hypot(*(positions[1] - positions[3])) + 1.0)
    ab = spatial_correlation_loss(torch.tensor(x), torch.tensor(positions), nb, variant="abs")
    assert ab.item() == pytest.approx(abs(r - s), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["rel", "abs"])
def test_half_precision_inputs_accumulate_in_fp32(rng, dtype, variant):
    x, positions, nb = _inputs(rng, (16, 4, 3, 5, 5), k=4, m=40)
    xh = torch.tensor(x, dtype=dtype)
    expected = np_layer_loss(xh.double().numpy(), positions, nb, variant)  # same rounded inputs, in float64
    got = spatial_correlation_loss(xh.requires_grad_(), torch.tensor(positions), torch.tensor(nb), variant=variant)
    assert got.dtype == torch.float32
    # fp32 accumulation: the error is far below what fp16/bf16 arithmetic would give
    assert abs(got.item() - expected) < 5e-5
    got.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


def test_batched_equals_per_neighbourhood_mean(rng):
    x, positions, nb = _inputs(rng, (7, 50), k=5, m=12)
    xt, pos = torch.tensor(x), torch.tensor(positions)
    per = [spatial_correlation_loss(xt, pos, torch.tensor(row)) for row in nb]
    assert spatial_correlation_loss(xt, pos, torch.tensor(nb)).item() == pytest.approx(torch.stack(per).mean().item())


class TestErrors:
    def setup_method(self):
        self.x = torch.randn(5, 20)
        self.pos = torch.rand(20, 2)
        self.nb = torch.arange(6)

    def test_too_few_samples(self):
        with pytest.raises(ValueError, match="at least 3 samples"):
            spatial_correlation_loss(self.x[:2], self.pos, self.nb)

    def test_flatten_counts_frames_as_samples(self):
        x = torch.randn(1, 2, 4, 2, 5)
        spatial_correlation_loss(x, self.pos, self.nb, time_reduction="flatten")
        with pytest.raises(ValueError, match="at least 3 samples"):
            spatial_correlation_loss(x, self.pos, self.nb, time_reduction="mean")

    def test_positions_shape(self):
        with pytest.raises(ValueError, match="positions"):
            spatial_correlation_loss(self.x, torch.rand(20, 3), self.nb)
        with pytest.raises(ValueError, match="positions has 19 rows but the layer has 20 units"):
            spatial_correlation_loss(self.x, torch.rand(19, 2), self.nb)

    def test_indices_out_of_range(self):
        with pytest.raises(ValueError, match="neighbourhoods holds unit indices"):
            spatial_correlation_loss(self.x, self.pos, torch.tensor([0, 5, 20]))
        with pytest.raises(ValueError, match="neighbourhoods holds unit indices"):
            spatial_correlation_loss(self.x, self.pos, torch.tensor([-1, 5, 2]))

    def test_neighbourhood_too_small_or_wrong_dtype(self):
        with pytest.raises(ValueError, match="M = 2"):
            spatial_correlation_loss(self.x, self.pos, torch.tensor([3]))
        with pytest.raises(TypeError, match="integer"):
            spatial_correlation_loss(self.x, self.pos, torch.tensor([0.0, 1.0]))

    def test_non_finite_activations(self):
        x = self.x.clone()
        x[2, 3] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            spatial_correlation_loss(x, self.pos, self.nb)
        x[2, 3] = float("inf")
        with pytest.raises(ValueError, match="non-finite"):
            spatial_correlation_loss(x, self.pos, self.nb)

    def test_wrong_feature_rank_and_options(self):
        with pytest.raises(ValueError, match="features must have shape"):
            spatial_correlation_loss(torch.randn(5, 2, 10, 1, 1, 1), self.pos, self.nb)  # (B, L, D) is a layout
        with pytest.raises(ValueError, match="features must have shape"):
            spatial_correlation_loss(torch.randn(20), self.pos, self.nb)
        with pytest.raises(ValueError, match="variant"):
            spatial_correlation_loss(self.x, self.pos, self.nb, variant="cosine")
        with pytest.raises(ValueError, match="time_reduction"):
            spatial_correlation_loss(self.x, self.pos, self.nb, time_reduction="max")
        with pytest.raises(ValueError, match="backend"):
            spatial_correlation_loss(self.x, self.pos, self.nb, backend="cuda")
        with pytest.raises(TypeError, match="floating"):
            spatial_correlation_loss(torch.ones(5, 20, dtype=torch.int64), self.pos, self.nb)
