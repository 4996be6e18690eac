"""SimCLR: NT-Xent against a float64 reference (values and gradients), its distributed gradient on 2 gloo ranks,
and the SimCLR module (resnet18 encoder + head)."""
import os

import pytest
import torch
import torch.nn as nn

from tdann_fast.models.simclr import SimCLR, gather_with_grad, nt_xent
from _spawn import end_rank, spawn_ranks, start_rank


def reference_nt_xent(z1, z2, temperature):
    """Direct formula over the 2B×2B similarity matrix: mean over anchors i of -log(e^{s_ip} / Σ_{j≠i} e^{s_ij})."""
    z = torch.cat([z1, z2], 0)
    z = z / z.norm(dim=1, keepdim=True)
    s = (z @ z.T) / temperature
    n, b = s.shape[0], z1.shape[0]
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        others = torch.cat([s[i, :i], s[i, i + 1:]])
        total = total + (torch.logsumexp(others, 0) - s[i, p])
    return total / n


def _loss_and_grads(fn, z1, z2, dtype):
    a = z1.to(dtype).requires_grad_(True)
    b = z2.to(dtype).requires_grad_(True)
    loss = fn(a, b)
    g1, g2 = torch.autograd.grad(loss, (a, b))
    return loss.detach().double(), g1.double(), g2.double()


# (D = 1 is left out: there the true gradient is 0 only by cancellation in the normalisation, and the float32
# rounding of F.normalize and of the reference differ in a way this error rule cannot compare.)
@pytest.mark.parametrize("B,D,T", [(3, 5, 0.1), (17, 8, 0.5), (2, 2, 0.07), (5, 130, 0.05)])
def test_nt_xent_matches_float64_reference(rng, B, D, T):
    z1 = torch.from_numpy(rng.normal(size=(B, D)))
    z2 = torch.from_numpy(rng.normal(size=(B, D)))
    truth = _loss_and_grads(lambda a, b: reference_nt_xent(a, b, T), z1, z2, torch.float64)
    ref32 = _loss_and_grads(lambda a, b: reference_nt_xent(a, b, T), z1, z2, torch.float32)
    fast = _loss_and_grads(lambda a, b: nt_xent(a, b, T)[0], z1, z2, torch.float32)
    for name, t, r, f in zip(("loss", "grad z1", "grad z2"), truth, ref32, fast):
        err_fast = (f - t).abs().max().item()
        err_ref = (r - t).abs().max().item()
        assert err_fast <= 2 * err_ref + 1e-6 * (1 + t.abs().max().item()), (name, err_fast, err_ref)


def test_nt_xent_logits_targets_and_float64_input(rng):
    B, D = 4, 6
    z1 = torch.from_numpy(rng.normal(size=(B, D)))
    z2 = z1 + 1e-3 * torch.from_numpy(rng.normal(size=(B, D)))  # views nearly equal: every anchor finds its pair
    loss, logits, targets = nt_xent(z1, z2, 0.2)
    assert logits.shape == (2 * B, 2 * B) and logits.dtype == torch.float32 and targets.dtype == torch.int64
    assert torch.isneginf(logits.diagonal()).all() and torch.isfinite(logits.fill_diagonal_(0)).all()
    assert targets.tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert (logits.argmax(1) == targets).float().mean().item() == 1.0
    assert loss.dtype == torch.float32 and loss.item() > 0


def test_nt_xent_single_sample_has_no_negatives():
    """B = 1 on one process: the positive is the only finite logit, so the loss is 0 with a zero gradient."""
    z1 = torch.randn(1, 4, requires_grad=True)
    z2 = torch.randn(1, 4, requires_grad=True)
    loss, logits, targets = nt_xent(z1, z2)
    assert loss.item() == 0.0 and targets.tolist() == [1, 0]
    loss.backward()
    assert z1.grad.abs().max().item() == 0.0 and z2.grad.abs().max().item() == 0.0


def test_nt_xent_argument_errors():
    z = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"z2: expected the shape of z1"):
        nt_xent(z, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"z1: expected a \(B, D\) tensor"):
        nt_xent(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match=r"z2: expected a \(B, D\) tensor"):
        nt_xent(z, torch.randn(3, 5, 1))
    with pytest.raises(ValueError, match=r"z1: expected B >= 1"):
        nt_xent(torch.randn(0, 5), torch.randn(0, 5))
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"temperature: expected a finite number > 0"):
            nt_xent(z, z, temperature=bad)


def test_gather_with_grad_is_identity_without_a_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


# ---------------------------------------------------------------------------------------------- 2 gloo ranks

def _ddp_worker(rank, world, port, z1, z2, temperature, out_dir):
    start_rank(rank, world, port)
    b = z1.shape[0] // world
    a = z1[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    c = z2[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    loss, logits, targets = nt_xent(a, c, temperature)
    loss.backward()
    local = nt_xent(a.detach(), c.detach(), temperature, gather_distributed=False)[0]
    torch.save({"loss": loss.detach(), "logits": logits.detach(), "targets": targets, "g1": a.grad,
                "g2": c.grad, "local": local}, os.path.join(out_dir, f"rank{rank}.pt"))
    end_rank()


def test_nt_xent_distributed_equals_single_process(rng, tmp_path):
    world, b, D, T = 2, 3, 5, 0.3
    z1 = torch.from_numpy(rng.normal(size=(world * b, D))).float()
    z2 = torch.from_numpy(rng.normal(size=(world * b, D))).float()
    spawn_ranks(_ddp_worker, world, z1, z2, T, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    a, c = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss, logits, targets = nt_xent(a, c, T)  # one process, the concatenated batch
    loss.backward()

    # DDP averages gradients over ranks: the mean of the rank losses and grad / world are the global ones
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), loss.detach(), rtol=1e-5, atol=1e-6)
    for r, res in enumerate(ranks):
        rows = slice(r * b, (r + 1) * b)
        torch.testing.assert_close(res["g1"] / world, a.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res["g2"] / world, c.grad[rows], rtol=1e-4, atol=1e-6)
        # logits: rank r's anchors are its z1 rows then its z2 rows; columns are [z1_0; z2_0; z1_1; z2_1]
        assert res["logits"].shape == (2 * b, 2 * b * world)
        cols = torch.cat([torch.arange(q * b, (q + 1) * b) + v * world * b for q in range(world) for v in (0, 1)])
        anchors = torch.cat([torch.arange(r * b, (r + 1) * b), world * b + torch.arange(r * b, (r + 1) * b)])
        torch.testing.assert_close(res["logits"], logits.detach()[anchors][:, cols], rtol=1e-5, atol=1e-5)
        assert torch.equal(cols[res["targets"]], targets[anchors])
        # without gathering, a rank sees only its own samples' negatives
        expected = nt_xent(z1[rows], z2[rows], T, gather_distributed=False)[0]
        torch.testing.assert_close(res["local"], expected)


# ---------------------------------------------------------------------------------------------- the module

def test_simclr_resnet18_forward_backward():
    torch.manual_seed(0)
    model = SimCLR(hidden_dim=64, dim=16)
    assert isinstance(model.encoder.fc, nn.Identity)
    assert [type(m) for m in model.head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert model.head[0].bias is None and model.head[0].in_features == 512 and model.head[3].out_features == 16
    seen = []
    model.encoder.get_submodule("layer2.1").register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x1, x2 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    loss, logits, targets = model(x1, x2)
    assert torch.isfinite(loss) and logits.shape == (6, 6) and targets.shape == (6,)
    assert seen == [torch.Size([6, 128, 4, 4])]  # one capture of both views (2B rows)
    loss.backward()
    g = model.encoder.conv1.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_simclr_argument_errors():
    tiny = lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 4))  # noqa: E731
    with pytest.raises(ValueError, match=r"temperature: expected a finite number > 0"):
        SimCLR(backbone=tiny, feature_dim=4, temperature=0)
    with pytest.raises(ValueError, match=r"dim: expected a positive integer"):
        SimCLR(backbone=tiny, feature_dim=4, dim=0)
    with pytest.raises(ValueError, match=r"hidden_dim: expected a positive integer"):
        SimCLR(backbone=tiny, feature_dim=4, hidden_dim=2.5)
    model = SimCLR(backbone=tiny, feature_dim=4, dim=3, hidden_dim=8)
    with pytest.raises(ValueError, match=r"x2: expected the shape of x1"):
        model(torch.randn(2, 3, 2, 2), torch.randn(3, 3, 2, 2))
    with pytest.raises(ValueError, match=r"x1: expected a \(B, 3, H, W\) tensor with B >= 1"):
        model(torch.randn(0, 3, 2, 2), torch.randn(0, 3, 2, 2))
    loss, logits, _ = model(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2))
    assert torch.isfinite(loss) and logits.shape == (4, 4)
