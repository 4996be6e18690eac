"""Layouts beyond convolutions: fully connected (B, N) and token (B, L, D) layers -- positions, sheets, presets, the
loss on them, and the models people train (torchvision vit_b_16, an nn.Linear stack)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from _np_reference import layer_loss as np_layer_loss
from tdann_fast import CorticalSheet, FeatureTaps, presets
from tdann_fast.loss import SpatialLoss, spatial_correlation_loss
from tdann_fast.sheet import retinotopic_positions, token_positions, uniform_positions


def _inside(pos, side):
    p = pos.double()
    return float(p.min()) >= 0.0 and float(p.max()) <= side


# ------------------------------------------------------------------------------------------------ positions

@pytest.mark.parametrize("side", [3.0, 5.7 ** 0.5, 1.0 / 3.0])  # the last two: float32 rounds the side up
def test_uniform_positions_fill_the_sheet(side):
    pos = uniform_positions(4000, side, seed=2)
    assert pos.shape == (4000, 2) and pos.dtype == torch.float32
    assert _inside(pos, side)
    # uniform: every quadrant holds about a quarter of the units
    quadrant = (pos[:, 0] > side / 2).long() * 2 + (pos[:, 1] > side / 2).long()
    counts = torch.bincount(quadrant, minlength=4)
    assert bool(((counts > 850) & (counts < 1150)).all()), counts


def test_uniform_positions_are_deterministic_for_a_seed():
    assert torch.equal(uniform_positions(50, 2.0, seed=7), uniform_positions(50, 2.0, seed=7))
    assert not torch.equal(uniform_positions(50, 2.0, seed=7), uniform_positions(50, 2.0, seed=8))


def test_token_positions_are_token_major_with_patches_as_retinotopic_positions():
    gh, gw, d, side, cls = 3, 4, 16, 12.0, 2
    pos = token_positions(gh, gw, d, side, class_tokens=cls, overlap=1.0, jitter=0.1, seed=5)
    assert pos.shape == ((cls + gh * gw) * d, 2) and pos.dtype == torch.float32
    # the patch tokens' channels are placed exactly as retinotopic_positions places the channels of a (D, H, W)
    # layer, reordered from C·H·W to (H·W)·C: unit (cls + row·gw + col)·D + d is channel d at (row, col)
    chw = retinotopic_positions(d, gh, gw, side, overlap=1.0, jitter=0.1, seed=5).reshape(d, gh, gw, 2)
    tokens = pos.reshape(cls + gh * gw, d, 2)
    for row in range(gh):
        for col in range(gw):
            assert torch.equal(tokens[cls + row * gw + col], chw[:, row, col])
    # without class tokens: the same patch tokens
    assert torch.equal(token_positions(gh, gw, d, side, class_tokens=0, seed=5), pos[cls * d:])


def test_token_positions_patch_channels_near_their_anchor_class_channels_everywhere():
    gh, gw, d, side = 4, 5, 64, 20.0
    pos = token_positions(gh, gw, d, side, class_tokens=1, jitter=0.05, seed=1)
    assert _inside(pos, side)
    tokens = pos.reshape(1 + gh * gw, d, 2)
    patches, cls = tokens[1:], tokens[0]
    anchors = patches.mean(1)  # (gh·gw, 2)
    spacing = min(side / gh, side / gw)
    assert float((patches - anchors[:, None]).norm(dim=-1).max()) < spacing
    # row-major patch order: x grows along a row (columns), y grows down the rows
    grid = anchors.reshape(gh, gw, 2)
    assert bool((grid[:, 1:, 0] > grid[:, :-1, 0]).all()) and bool((grid[1:, :, 1] > grid[:-1, :, 1]).all())
    # the channels of one patch token are nearer their own anchor than any other, for the vast majority
    own = torch.arange(gh * gw).repeat_interleave(d)
    nearest = (patches.reshape(-1, 1, 2) - anchors[None]).norm(dim=-1).argmin(1)
    assert float((nearest == own).double().mean()) > 0.9
    # class-token channels have no anchor: spread over the whole sheet (uniform std is side / sqrt(12))
    assert float(cls.std(0).min()) > 0.7 * side / math.sqrt(12)
    assert float(cls.std(0).max()) > 3 * float(patches.std(1).max())
    quadrant = (cls[:, 0] > side / 2).long() * 2 + (cls[:, 1] > side / 2).long()
    assert bool((torch.bincount(quadrant, minlength=4) > 0).all())


def test_token_positions_deterministic_and_inside_awkward_sides():
    a = token_positions(2, 3, 8, 940.0 ** 0.5, class_tokens=3, jitter=0.3, seed=4)
    assert torch.equal(a, token_positions(2, 3, 8, 940.0 ** 0.5, class_tokens=3, jitter=0.3, seed=4))
    assert not torch.equal(a, token_positions(2, 3, 8, 940.0 ** 0.5, class_tokens=3, jitter=0.3, seed=5))
    for side in (0.1, 5.7 ** 0.5, 2.7):
        assert _inside(token_positions(3, 2, 8, side, class_tokens=2, jitter=0.3, seed=0), side)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: uniform_positions(0, 1.0), "num_units must be a positive integer"),
        (lambda: uniform_positions(2.5, 1.0), "num_units must be a positive integer"),
        (lambda: uniform_positions(True, 1.0), "num_units must be a positive integer"),
        (lambda: uniform_positions(10, -1.0), "side_mm must be a finite number > 0"),
        (lambda: uniform_positions(10, 1.0, seed=-1), "seed must be an integer >= 0"),
        (lambda: token_positions(0, 2, 4, 1.0), "grid_h must be a positive integer"),
        (lambda: token_positions(2, -2, 4, 1.0), "grid_w must be a positive integer"),
        (lambda: token_positions(2, 2, 0, 1.0), "dim must be a positive integer"),
        (lambda: token_positions(2, 2, 4, 0.0), "side_mm must be a finite number > 0"),
        (lambda: token_positions(2, 2, 4, 1.0, class_tokens=-1), "class_tokens must be an integer >= 0"),
        (lambda: token_positions(2, 2, 4, 1.0, jitter=-0.1), "jitter must be a finite number >= 0"),
        (lambda: token_positions(2, 2, 4, 1.0, overlap=0), "overlap must be a finite number > 0"),
        (lambda: CorticalSheet.linear(0, 1.0, 0.5), "num_units must be a positive integer"),
        (lambda: CorticalSheet.linear(64, 1.0, 2.0), "neighbourhood_width_mm"),
        (lambda: CorticalSheet.linear(8, 10.0, 0.5, num_neighbourhoods=50), "min_units"),
        (lambda: CorticalSheet.tokens(2, 2, 0, 1.0, 0.5), "dim must be a positive integer"),
        (lambda: CorticalSheet.tokens(2, 2, 8, 1.0, 0.5, class_tokens=1.5), "class_tokens must be an integer"),
    ],
)
def test_layout_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------------- sheets

def test_linear_and_token_sheets(tmp_path):
    lin = CorticalSheet.linear(200, 2.0, 0.8, seed=3, num_neighbourhoods=100, min_units=5)
    assert lin.shape == (200,) and lin.num_units == 200 and _inside(lin.positions, 2.0)
    assert torch.equal(lin.positions, uniform_positions(200, 2.0, seed=3))
    assert 0 < lin.num_neighbourhoods <= 100 and int(lin.neighbourhoods.max()) < 200
    tok = CorticalSheet.tokens(3, 3, 32, 6.0, 2.0, class_tokens=1, seed=2, num_neighbourhoods=100, min_units=5)
    assert tok.shape == (10, 32) and tok.num_units == 320
    assert torch.equal(tok.positions, token_positions(3, 3, 32, 6.0, class_tokens=1, seed=2))
    tok.save(tmp_path / "tok.pt")
    back = CorticalSheet.load(tmp_path / "tok.pt")
    assert back.shape == (10, 32) and torch.equal(back.positions, tok.positions)


def test_vit_token_shapes_and_errors():
    assert presets.vit_token_shapes() == (14, 14, 768, 197)
    assert presets.vit_token_shapes(64) == (4, 4, 768, 17)
    assert presets.vit_token_shapes(96, patch_size=32, hidden_dim=1024, class_tokens=5) == (3, 3, 1024, 14)
    with pytest.raises(ValueError, match=r"image_size \(100\) must be a multiple of patch_size \(16\)"):
        presets.vit_token_shapes(100)
    with pytest.raises(ValueError, match="image_size must be an integer >= 16"):
        presets.vit_token_shapes(8)
    with pytest.raises(ValueError, match="class_tokens must be an integer >= 0"):
        presets.vit_token_shapes(class_tokens=-1)


def test_vit_b_16_preset_layers_widths_and_errors():
    one = ["encoder.layers.encoder_layer_3"]
    big = presets.vit_b_16(224, layers=one, num_neighbourhoods=100)[one[0]]
    assert big.shape == (197, 768) and big.side_mm == presets.VIT_SIDE_MM
    assert big.neighbourhood_width_mm == presets.VIT_NEIGHBOURHOOD_WIDTH_MM  # a few hundred units per window
    assert 200 <= big.neighbourhood_size <= 500
    small = presets.vit_b_16(64, layers=one, num_neighbourhoods=100)[one[0]]
    assert small.shape == (17, 768)
    expected = small.num_units * small.neighbourhood_width_mm ** 2 / small.side_mm ** 2
    assert small.neighbourhood_width_mm > presets.VIT_NEIGHBOURHOOD_WIDTH_MM and expected == pytest.approx(50)
    kept = presets.vit_b_16(64, layers=one, num_neighbourhoods=100, min_expected_units=0)[one[0]]
    assert kept.neighbourhood_width_mm == presets.VIT_NEIGHBOURHOOD_WIDTH_MM
    # a subset gets the same sheets as the full preset, in network order
    two = presets.vit_b_16(64, layers=["encoder.layers.encoder_layer_5", one[0]], num_neighbourhoods=30)
    assert list(two) == [one[0], "encoder.layers.encoder_layer_5"]
    assert torch.equal(two[one[0]].positions, small.positions)
    assert not torch.equal(two["encoder.layers.encoder_layer_5"].positions, small.positions)
    with pytest.raises(KeyError, match="unknown vit_b_16 blocks"):
        presets.vit_b_16(64, layers=["encoder.layers.encoder_layer_12"])
    with pytest.raises(ValueError, match="duplicates"):
        presets.vit_b_16(64, layers=one * 2)
    with pytest.raises(ValueError, match="side_mm"):
        presets.vit_b_16(64, layers=one, side_mm=0)


def test_linear_sheets_preset():
    sheets = presets.linear_sheets({"fc1": 128, "fc2": 64}, 1.0, 0.5, seed=1, num_neighbourhoods=50, min_units=5)
    assert list(sheets) == ["fc1", "fc2"]
    assert sheets["fc1"].shape == (128,) and sheets["fc2"].shape == (64,)
    assert torch.equal(sheets["fc2"].positions, uniform_positions(64, 1.0, seed=2))
    with pytest.raises(ValueError, match=r"num_units\['fc1'\] must be an integer >= 2"):
        presets.linear_sheets({"fc1": 0}, 1.0, 0.5)
    with pytest.raises(ValueError, match="non-empty mapping"):
        presets.linear_sheets({}, 1.0, 0.5)


# ----------------------------------------------------------------------------------------------------- loss

def _tokens(rng, b, l, d, layout):
    """float64 (B, L, D) activations, contiguous or as a non-contiguous view of another layout."""
    if layout == "contiguous":
        return torch.from_numpy(rng.standard_normal((b, l, d)))
    if layout == "transposed":  # a (B, D, L) tensor seen as (B, L, D)
        return torch.from_numpy(rng.standard_normal((b, d, l))).transpose(1, 2)
    return torch.from_numpy(rng.standard_normal((b, l, 2 * d)))[:, :, ::2]  # strided channels


@pytest.mark.parametrize("variant", ["rel", "abs"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_token_loss_equals_loss_of_flattened_tokens(rng, layout, variant):
    b, l, d = 6, 5, 12
    x = _tokens(rng, b, l, d, layout)
    assert layout == "contiguous" or not x.is_contiguous()
    sheet = CorticalSheet.tokens(2, 2, d, 3.0, 1.5, class_tokens=1, num_neighbourhoods=40, min_units=5)
    nb = sheet.neighbourhoods[:8]
    tokens = x.clone().requires_grad_(True) if layout == "contiguous" else x.requires_grad_(True)
    flat = x.detach().flatten(1).clone().requires_grad_(True)
    loss_tokens = spatial_correlation_loss(tokens, sheet.positions, nb, variant=variant)
    loss_flat = spatial_correlation_loss(flat, sheet.positions, nb, variant=variant)
    assert loss_tokens.dtype == torch.float64
    assert torch.allclose(loss_tokens, loss_flat, rtol=1e-12, atol=1e-12)
    expected = np_layer_loss(x.detach().reshape(b, -1).numpy(), sheet.positions.double().numpy(), nb.numpy(), variant)
    assert loss_tokens.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    (g_tokens,) = torch.autograd.grad(loss_tokens, tokens)
    (g_flat,) = torch.autograd.grad(loss_flat, flat)
    assert g_tokens.shape == (b, l, d)
    assert torch.allclose(g_tokens.flatten(1), g_flat, rtol=1e-10, atol=1e-14)
    assert float(g_flat.abs().sum()) > 0


def test_linear_loss_matches_reference_and_spatial_loss_takes_both_layouts(rng):
    b, n = 8, 60
    sheet = CorticalSheet.linear(n, 1.0, 0.6, num_neighbourhoods=40, min_units=5)
    x = torch.from_numpy(rng.standard_normal((b, n))).requires_grad_(True)
    loss = spatial_correlation_loss(x, sheet.positions, sheet.neighbourhoods)
    expected = np_layer_loss(x.detach().numpy(), sheet.positions.double().numpy(), sheet.neighbourhoods.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # SpatialLoss on a (B, N) layer and a non-contiguous (B, L, D) layer = the same values flattened
    tok = CorticalSheet.tokens(2, 2, 12, 3.0, 1.5, num_neighbourhoods=40, min_units=5)
    y = torch.from_numpy(rng.standard_normal((b, 12, 5))).transpose(1, 2).requires_grad_(True)
    module = SpatialLoss({"fc": sheet, "block": tok}, neighbourhoods_per_step=4, seed=3)
    twin = SpatialLoss({"fc": sheet, "block": tok}, neighbourhoods_per_step=4, seed=3)
    y_flat = y.detach().flatten(1).clone().requires_grad_(True)
    total = module({"fc": x, "block": y})
    total_flat = twin({"fc": x, "block": y_flat})
    assert torch.allclose(total, total_flat, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(total, y)
    (g_flat,) = torch.autograd.grad(total_flat, y_flat)
    assert g.shape == y.shape and torch.allclose(g.flatten(1), g_flat, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------- models

def test_vit_b_16_blocks_with_feature_taps_and_spatial_loss(rng):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(int(rng.integers(2 ** 31)))
    size = 64
    model = torchvision.models.vit_b_16(weights=None, image_size=size)
    names = set(dict(model.named_modules()))
    assert set(presets.VIT_B_16_LAYERS) <= names  # torchvision's own names
    layers = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    sheets = presets.vit_b_16(image_size=size, layers=layers, num_neighbourhoods=20)
    loss_fn = SpatialLoss(sheets, alpha=1.0)
    x = torch.from_numpy(rng.standard_normal((4, 3, size, size))).float()
    with FeatureTaps(model, layers) as taps:
        model(x)
        assert {n: tuple(f.shape) for n, f in taps.features.items()} == {n: (4, 17, 768) for n in layers}
        assert all(tuple(f.shape[1:]) == sheets[n].shape for n, f in taps.features.items())
        loss = loss_fn(taps.features)
    assert math.isfinite(loss.item()) and 0.0 < loss.item() <= len(layers)
    assert all(0.0 < v.item() <= 1.0 for v in loss_fn.last_layer_losses.values())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    for name in ("conv_proj.weight", "class_token", "encoder.layers.encoder_layer_1.mlp.0.weight"):
        assert float(grads[name].abs().sum()) > 0, name
    assert "heads.head.weight" not in grads  # nothing after the tapped blocks takes part


def test_all_vit_b_16_block_outputs_match_their_sheets():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.vit_b_16(weights=None, image_size=32)
    sheets = presets.vit_b_16(image_size=32, num_neighbourhoods=10)
    assert list(sheets) == list(presets.VIT_B_16_LAYERS)
    with torch.no_grad(), FeatureTaps(model, list(sheets)) as taps:
        model(torch.zeros(1, 3, 32, 32))
    assert {n: tuple(f.shape[1:]) for n, f in taps.features.items()} == {n: s.shape for n, s in sheets.items()}


def _mean_table_loss(model, x, sheets):
    """The layers' spatial loss over their whole neighbourhood tables (no sampling noise)."""
    with torch.no_grad(), FeatureTaps(model, list(sheets)) as taps:
        model(x)
    return sum(spatial_correlation_loss(taps.features[n], s.positions, s.neighbourhoods).item()
               for n, s in sheets.items())


def test_sgd_on_the_spatial_loss_lowers_it_for_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32))
    sheets = presets.linear_sheets({"0": 64, "2": 32}, side_mm=1.0, neighbourhood_width_mm=0.6, seed=0,
                                   num_neighbourhoods=200, min_units=6)
    loss_fn = SpatialLoss(sheets, alpha=1.0, neighbourhoods_per_step=8, seed=0)
    x = torch.randn(64, 20)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _mean_table_loss(model, x, sheets)
    for _ in range(30):
        with FeatureTaps(model, list(sheets)) as taps:
            model(x)
            loss = loss_fn(taps.features)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = _mean_table_loss(model, x, sheets)
    # over 200 torch seeds this setting lowered the loss by 55-75 % (it starts near 1.0 for the two layers)
    assert after < 0.75 * before, (before, after)
