"""SimCLR on images around torchvision's ``resnet18`` (random init): projection head to 128-d and the NT-Xent loss.

The ventral TDANN's task. Two augmented views of every sample go through the encoder and the projection head as one
batch; the NT-Xent (normalised temperature-scaled cross-entropy) loss makes each view pick the other view of its
sample out of all the views of the step.

Works in a single process and under torchrun/DDP: with ``gather_distributed`` the projections of every rank are
gathered (keeping the gradient of each rank's own rows, :func:`gather_with_grad`), so the negatives of an anchor are
the 2·B·world - 2 views of the other samples of all ranks. The per-rank loss is the mean over the rank's own 2·B
anchors; DDP's averaging of the parameter gradients over ranks then gives exactly the gradient of the mean loss over
all 2·B·world anchors (see :func:`nt_xent`), so no rescaling is applied.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SimCLR", "gather_with_grad", "nt_xent", "resnet18_backbone"]


def resnet18_backbone() -> nn.Module:
    """torchvision ``resnet18(weights=None)`` with the classifier replaced by ``Identity`` (512-d output)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.fc = nn.Identity()
    return net


def _dist_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward: the sum over ranks of the gradient of this rank's rows.

    Every rank's loss may depend on every rank's rows, so the gradient of rank r's rows is the sum over ranks of
    the gradients that their losses send into those rows: an all-reduce (sum) of the whole gathered gradient, then
    this rank's slice. (Written here rather than with ``torch.distributed.nn.functional.all_gather``, whose
    backward uses reduce-scatter; plain ``all_gather`` + ``all_reduce`` work on every backend, gloo included.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, x.shape[0]
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x)
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce writes in place: never into autograd's
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 across the default process group, rank 0's rows first, keeping the gradient.

    The gradient of this rank's rows is the sum over ranks of the gradients flowing into those rows of the gathered
    tensor (every rank must run the backward, as under DDP). Every rank must pass a tensor of the same shape.
    Identity (``x`` itself) without an initialised process group or with a world size of 1.
    """
    if _dist_world() == 1:
        return x
    return _GatherWithGrad.apply(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather_distributed: bool = True):
    """SimCLR's NT-Xent loss of two views ``z1``, ``z2`` (B, D) of the same B samples.

    The rows are L2-normalised and stacked as ``z = [z1; z2]`` (2B, D); with ``gather_distributed`` under an
    initialised process group, ``z`` of every rank is gathered into ``z_all`` (2B·world, D) with
    :func:`gather_with_grad` (rank r's rows at ``r·2B .. r·2B + 2B - 1``, its z1 rows first); otherwise
    ``z_all = z``. Anchor i of this rank is row i of ``z``; its logits are ``z_i · z_all / temperature`` with its
    own column set to -inf, its target is the column of the other view of the same sample. The loss is the mean
    over the local 2B anchors of the cross-entropy.

    Distributed gradient: the gradient of rank r's rows is the sum over ranks of ∂loss_r'/∂z_r (the backward of the
    gather), i.e. ∂(Σ_r' loss_r')/∂z_r = world · ∂L/∂z_r with L the mean loss over all 2B·world anchors (every
    rank holds the same number of anchors). DDP divides the summed parameter gradients by world, which gives
    ∂L/∂θ exactly: the loss is not rescaled. (The mean over ranks of the returned losses is L.)

    With B = 1 on a single process (or without gathering) an anchor has no negative: its only finite logit is the
    positive, and the loss is 0 with a zero gradient.

    Computed in float32 (autocast off). Returns ``(loss, logits, targets)``: ``logits`` (2B, 2B·world) with the
    self-similarity at -inf, ``targets`` (2B,) int64, so that top-1 accuracy is
    ``(logits.argmax(1) == targets).float().mean()``.
    """
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor) or z.ndim != 2:
            raise ValueError(f"{name}: expected a (B, D) tensor, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if z1.shape != z2.shape:
        raise ValueError(f"z2: expected the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    B, D = z1.shape
    if B < 1 or D < 1:
        raise ValueError(f"z1: expected B >= 1 rows and D >= 1 columns, got {tuple(z1.shape)}")
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                             and temperature > 0):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")

    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2], 0).float(), dim=1)  # (2B, D)
        world = _dist_world() if gather_distributed else 1
        rank = dist.get_rank() if world > 1 else 0
        z_all = gather_with_grad(z) if world > 1 else z  # (2B·world, D)
        logits = (z @ z_all.T) / float(temperature)
        local = torch.arange(2 * B, device=z.device)
        offset = rank * 2 * B
        self_column = torch.arange(logits.shape[1], device=z.device)[None, :] == (local + offset)[:, None]
        logits = logits.masked_fill(self_column, float("-inf"))
        targets = (local + B) % (2 * B) + offset
        loss = F.cross_entropy(logits, targets)
    return loss, logits, targets


class SimCLR(nn.Module):
    """SimCLR: encoder + projection head + NT-Xent.

    Args:
        backbone: callable building the encoder (default :func:`resnet18_backbone`; its output is ``feature_dim``-d).
        feature_dim: the encoder's output size (512). dim: projection size (128). hidden_dim: head hidden size.
        temperature: NT-Xent temperature T (0.1). gather_distributed: take the negatives from every rank under DDP
        (:func:`nt_xent`).

    ``encoder`` is the backbone (tap its layers for the spatial loss, e.g. ``layer2.1``, ``layer4.1``); ``head`` the
    projection head, SimCLR v2 style: Linear(feature_dim, hidden_dim, no bias) - BatchNorm1d - ReLU -
    Linear(hidden_dim, dim) (the bias before a BatchNorm would be cancelled by it). The encoder's BatchNorms use the
    statistics of the rank's own batch; wrap the model with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for global
    statistics.
    """

    def __init__(self, backbone=resnet18_backbone, feature_dim: int = 512, dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.1, gather_distributed: bool = True):
        super().__init__()
        for name, v in (("feature_dim", feature_dim), ("dim", dim), ("hidden_dim", hidden_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                                 and temperature > 0):
            raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
        self.temperature, self.gather_distributed = float(temperature), bool(gather_distributed)
        self.encoder = backbone()
        self.head = nn.Sequential(nn.Linear(feature_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                  nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        """NT-Xent loss of two views (B, 3, H, W) of the same B images.

        Both views go through encoder and head as one concatenated batch ``[x1; x2]`` (2B, 3, H, W): BatchNorm
        sees both views, and a tap on an encoder layer captures one (2B, C, H', W') tensor per layer per step
        (rows 0..B-1 from ``x1``, B..2B-1 from ``x2``). Returns ``(loss, logits, targets)`` of :func:`nt_xent`.
        """
        for name, x in (("x1", x1), ("x2", x2)):
            if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 1:
                raise ValueError(f"{name}: expected a (B, 3, H, W) tensor with B >= 1, got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x1.shape != x2.shape:
            raise ValueError(f"x2: expected the shape of x1 {tuple(x1.shape)}, got {tuple(x2.shape)}")
        B = x1.shape[0]
        z = self.head(self.encoder(torch.cat([x1, x2], 0)))
        return nt_xent(z[:B], z[B:], self.temperature, self.gather_distributed)
