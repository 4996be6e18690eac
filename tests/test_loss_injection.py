"""The loss at training scale: sparse gradient injection at taps, no activation-sized allocation, teachers and
averaged models, the no-grad warning, torch.compile, DDP without buffer traffic, and a sync-free CUDA step."""
import copy
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tdann_fast import CorticalSheet, FeatureTaps, SpatialLoss
from tdann_fast.loss import reference, spatial_correlation_loss, tap
from tdann_fast.loss.gather import dense_gradient
from _spawn import end_rank, spawn_ranks, start_rank


def _rows(rng, n, k, m, shared=0):
    rows = np.stack([rng.choice(n, m, replace=False) for _ in range(k)])
    if shared and k > 1:
        rows[1, :shared] = rows[0, :shared]  # units shared between neighbourhoods (distinct within a row)
        rows[1] = np.where(np.arange(m) < shared, rows[1], rows[1])
    return torch.tensor(rows)


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "sliced":
        return x[:, :, :, 1:, :]  # not viewable as (B, N)
    return x


def _step_grad(x_leaf, layout, pos, nb, variant, mode, dtype, task, sparse):
    """d(task + loss)/dx through the path a training step takes (a tapped, non-leaf activation)."""
    h = _layout(x_leaf.to(dtype) * 1.0, layout)
    y = tap(h) if sparse else h
    with (torch.enable_grad() if sparse else dense_gradient()):
        loss = spatial_correlation_loss(y, pos, nb, variant, mode, backend="torch")
    (g,) = torch.autograd.grad(loss + (y.float() * task).sum(), x_leaf)
    return loss, g


@pytest.mark.parametrize("variant", ["rel", "abs"])
@pytest.mark.parametrize("mode", ["mean", "flatten", "dual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_injection_equals_dense_within_twice_plain(rng, variant, mode, dtype, layout):
    """Sparse injection vs the float64 reference: error <= 2 x the plain same-dtype implementation's + eps, values
    and gradients; B = 3, K = 3 with units shared between rows, M not a multiple of anything, dead units."""
    x64 = torch.tensor(rng.normal(size=(3, 5, 2, 7, 6))).relu()  # ReLU: many dead units
    x64[:, 0] = 0.0
    b, c, t, h, w = x64.shape
    n = c * (h - (1 if layout == "sliced" else 0)) * w
    nb = _rows(rng, n, 3, 13, shared=5)
    pos = torch.tensor(rng.uniform(0, 3, size=(n, 2)), dtype=torch.float32)
    task = torch.tensor(rng.normal(size=(b, c, t, h - (1 if layout == "sliced" else 0), w)), dtype=torch.float32)
    leaf64 = x64.clone().requires_grad_()
    h64 = _layout(leaf64, layout)
    want = reference.layer_loss(h64, pos.double(), nb, variant, mode)
    (g_want,) = torch.autograd.grad(want + (h64 * task.double()).sum(), leaf64)
    x = x64.clone().requires_grad_()
    xd = x.detach().to(dtype).requires_grad_()
    hp = _layout(xd, layout)
    plain = reference.layer_loss(hp, pos, nb, variant, mode)
    (g_plain,) = torch.autograd.grad(plain + (hp.float() * task).sum(), xd)
    err_plain = ((plain.double() - want).abs().item(), (g_plain.double() - g_want).abs().max().item())
    for sparse in (True, False):
        x.grad = None
        loss, g = _step_grad(x, layout, pos, nb, variant, mode, dtype, task, sparse)
        err = ((loss.double() - want).abs().item(), (g.double() - g_want).abs().max().item())
        for e, ep in zip(err, err_plain):
            assert e <= 2 * ep + 1e-6, (sparse, err, err_plain)


class _AllocationLog(TorchDispatchMode):
    """Records every op output of at least ``numel`` elements that does not reuse an input's storage."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.log = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for o in tree_leaves(out):
            if isinstance(o, torch.Tensor) and o.numel() >= self.numel and o.untyped_storage().data_ptr() not in inputs:
                self.log.append(str(func))
        return out


@pytest.mark.parametrize("mode", ["mean", "dual"])
def test_backward_allocates_no_activation_sized_tensor(rng, mode):
    """A step with the loss allocates exactly the activation-sized tensors of the same step without it (the
    task's own); the dense formulation adds its zeros (this test fails on the old gather)."""
    shape = (6, 8, 3, 10, 10)
    sheet = CorticalSheet.retinotopic(8, 10, 10, 5.0, 2.0, num_neighbourhoods=30, max_units=40)
    w = torch.tensor(rng.normal(size=shape), dtype=torch.float32)

    def allocations(with_loss, dense=False):
        x = torch.tensor(rng.normal(size=shape), dtype=torch.float32, requires_grad=True)
        y = tap(x * 1.0)
        total = (y * w).sum()
        if with_loss:
            with (dense_gradient() if dense else torch.enable_grad()):
                total = total + spatial_correlation_loss(y, sheet.positions, sheet.neighbourhoods[:2],
                                                         time_reduction=mode)
        log = _AllocationLog(x.numel())
        with log:
            total.backward()
        return sorted(log.log)

    task_only = allocations(False)
    assert task_only  # the task's own gradient: the log sees activation-sized tensors
    assert allocations(True) == task_only
    assert len(allocations(True, dense=True)) > len(task_only)


def test_shared_incoming_gradient_is_not_modified(rng):
    """``a + b`` hands both branches the same gradient tensor: the loss must not add into it in place."""
    sheet = CorticalSheet.retinotopic(4, 6, 6, 4.0, 2.0, num_neighbourhoods=20, max_units=30)
    x = torch.tensor(rng.normal(size=(5, 4, 6, 6)), requires_grad=True)
    w = torch.tensor(rng.normal(size=(5, 4, 6, 6)))
    nb = sheet.neighbourhoods[:1]
    z = x * 2.0  # created first: autograd runs its branch after the tapped one
    y = tap(x * 1.0)
    loss = spatial_correlation_loss(y, sheet.positions.double(), nb) + ((y + z) * w).sum()
    (g,) = torch.autograd.grad(loss, x)
    (g_loss,) = torch.autograd.grad(reference.layer_loss(x, sheet.positions.double(), nb), x)
    assert torch.allclose(g, g_loss + 3 * w, rtol=0, atol=1e-12)


def _net():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def _sheets():
    return {"1": CorticalSheet.retinotopic(6, 8, 8, 4.0, 2.0, num_neighbourhoods=30, max_units=40, seed=1),
            "3": CorticalSheet.retinotopic(6, 8, 8, 4.0, 2.0, num_neighbourhoods=30, max_units=40, seed=2)}


@pytest.mark.parametrize("copy_kind", ["deepcopy", "averaged"])
def test_teacher_copies_do_not_overwrite_the_students_features(rng, copy_kind):
    torch.manual_seed(0)
    student = _net()
    taps = FeatureTaps(student, ["1", "3"])
    if copy_kind == "deepcopy":
        teacher = copy.deepcopy(student).requires_grad_(False)
    else:
        teacher = torch.optim.swa_utils.AveragedModel(student)
    x = torch.tensor(rng.normal(size=(5, 3, 8, 8)), dtype=torch.float32)
    out = student(x)
    mine = dict(taps.features)
    with torch.no_grad():
        teacher(x + 1.0)
    assert taps.features["1"] is mine["1"] and taps.features["3"] is mine["3"]
    spatial = SpatialLoss(_sheets(), alpha=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the student's features need grad: no warning
        loss = spatial(taps.features) + out.square().mean()
    loss.backward()
    assert student[0].weight.grad is not None and student[0].weight.grad.abs().sum() > 0
    taps.remove()


def test_warns_once_when_features_have_no_grad(rng):
    spatial = SpatialLoss(_sheets())
    feats = {n: torch.tensor(rng.normal(size=(5, 6, 8, 8)), dtype=torch.float32) for n in ("1", "3")}
    with pytest.warns(RuntimeWarning, match=r"do not require grad.*once") as record:
        spatial(feats)
        spatial(feats)
    assert len([w for w in record if "do not require grad" in str(w.message)]) == 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        SpatialLoss(_sheets())(feats)  # grad disabled (evaluation): nothing to warn about


def test_compile_fullgraph_step_matches_eager(rng):
    """torch.compile(fullgraph=True) of a step that runs the model and calls SpatialLoss (inductor, CPU): value and
    parameter gradients within the 2x rule of the eager float32 step, both against the float64 eager step."""
    torch.manual_seed(0)
    net = _net()
    spatial = SpatialLoss(_sheets(), alpha=0.5)
    x = torch.tensor(rng.normal(size=(5, 3, 8, 8)), dtype=torch.float32)

    def step(inp, net=net, spatial=spatial):
        f1 = net[1](net[0](inp))
        f3 = net[3](net[2](f1))
        out = net[6](net[5](net[4](f3)))
        return out.square().mean() + spatial({"1": f1, "3": f3})

    state = copy.deepcopy(spatial.state_dict())
    got = torch.compile(step, fullgraph=True)(x)
    g_got = torch.autograd.grad(got, list(net.parameters()))
    assert int(spatial.sampler_step) == 1  # the compiled step advanced the sampler
    spatial.load_state_dict(state)  # the same rows again
    want = step(x)
    g_want = torch.autograd.grad(want, list(net.parameters()))
    net64, spatial64 = copy.deepcopy(net).double(), SpatialLoss(_sheets(), alpha=0.5)
    spatial64.load_state_dict(state)
    ref = step(x.double(), net64, spatial64)
    g_ref = torch.autograd.grad(ref, list(net64.parameters()))
    triples = [(got, want, ref), *zip(g_got, g_want, g_ref)]
    eps = 1e-5 * max(r.abs().max().item() for _, _, r in triples)  # float32 rounding scales with the largest terms
    for a, b, r in triples:
        err_compiled = (a.double() - r).abs().max().item()
        err_eager = (b.double() - r).abs().max().item()
        assert err_compiled <= 2 * err_eager + eps, (err_compiled, err_eager, eps)


# ------------------------------------------------------------------------------------------------- DDP

def test_sheets_are_state_but_not_buffers():
    model = nn.Module()
    model.net = _net()
    model.spatial = SpatialLoss(_sheets())
    buffers = dict(model.named_buffers())
    assert not any(k.startswith("spatial.") for k in buffers)  # DDP broadcasts named_buffers(): none of these
    state = model.state_dict()
    assert {"spatial.sheets.1.positions", "spatial.sheets.3.neighbourhoods", "spatial.alpha"} <= set(state)
    other = nn.Module()
    other.net = _net()
    other.spatial = SpatialLoss(_sheets())
    other.load_state_dict(state)
    assert torch.equal(other.spatial.positions("3"), model.spatial.positions("3"))


def _ddp_worker(rank, world, port, out_path, steps):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    start_rank(rank, world, port)
    torch.manual_seed(0)
    sheets = {"1": CorticalSheet.retinotopic(16, 32, 32, 8.0, 2.0, num_neighbourhoods=4000, max_units=100, seed=1)}

    class Inside(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
            self.spatial = SpatialLoss(sheets, check_inputs=False)

        def forward(self, x):
            f = tap(self.net(x))
            return f.mean() + self.spatial({"1": f})

    inside = DDP(Inside())
    outside_net = DDP(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()))
    outside_loss = SpatialLoss(sheets, check_inputs=False)
    x = torch.randn(4, 3, 32, 32)

    def step_inside():
        inside(x).backward()

    def step_outside():
        f = tap(outside_net(x))
        (f.mean() + outside_loss({"1": f})).backward()

    times = {"inside": [], "outside": []}
    for _ in range(3):
        step_inside(), step_outside()
    for r in range(steps):
        for name, fn in (("inside", step_inside), ("outside", step_outside))[:: 1 if r % 2 else -1]:
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    broadcast = [n for n, _ in inside.module.named_buffers()]
    if rank == 0:
        import json

        ratio = float(np.median(times["inside"]) / np.median(times["outside"]))
        with open(out_path, "w") as fh:
            json.dump({"ratio": ratio, "broadcast_buffers": broadcast,
                       "inside_ms": 1e3 * float(np.median(times["inside"])),
                       "outside_ms": 1e3 * float(np.median(times["outside"]))}, fh)
    end_rank()


def test_ddp_step_with_the_loss_inside_sends_no_sheets(tmp_path):
    import json

    out = tmp_path / "ddp.json"
    spawn_ranks(_ddp_worker, 2, str(out), 100)
    result = json.loads(out.read_text())
    print(f"\n2-rank gloo step, loss inside / outside the DDP module: {result['ratio']:.3f} "
          f"({result['inside_ms']:.1f} ms / {result['outside_ms']:.1f} ms)")
    assert result["broadcast_buffers"] == []  # the sheet (16·32·32 positions + 4000-row table) never travels


# ------------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_step_makes_no_host_sync():
    from tdann_fast.presets import r3d18_mt

    sheets = {k: v for k, v in r3d18_mt(input_size=32, frames=4, num_neighbourhoods=64).items()
              if k in ("layer2.0", "layer3.1")}
    spatial = SpatialLoss(sheets, alpha=0.5, check_inputs=False).cuda()
    feats = {"layer2.0": torch.randn(8, 128, 2, 4, 4, device="cuda"),
             "layer3.1": torch.randn(8, 256, 1, 2, 2, device="cuda")}
    w = {k: torch.randn_like(v) for k, v in feats.items()}

    def step():
        leaves = {k: v.clone().requires_grad_() for k, v in feats.items()}
        tapped = {k: tap(v * 1.0) for k, v in leaves.items()}
        total = spatial(tapped) + sum((tapped[k] * w[k]).sum() for k in tapped)
        total.backward()

    step()  # warm-up: kernels compiled, launch plans cached
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
