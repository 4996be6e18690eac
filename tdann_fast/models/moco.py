"""MoCo v2 on video around torchvision's ``r3d_18``: MLP head to 128-d, momentum encoder, queue, shuffle-BN.

Works in a single process (no DDP needed) and under torchrun/DDP: keys are gathered from all ranks before they
enter the queue, and shuffle-BN shuffles the key batch across ranks when the world size is > 1.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def r3d18_backbone() -> nn.Module:
    """torchvision ``r3d_18(weights=None)`` with the classifier replaced by ``Identity`` (512-d output)."""
    from torchvision.models.video import r3d_18

    net = r3d_18(weights=None)
    net.fc = nn.Identity()
    return net


def _dist_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 (no gradient); identity in a single process."""
    if _dist_world() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


class MoCo(nn.Module):
    """MoCo v2.

    Args:
        backbone: callable building the encoder (default :func:`r3d18_backbone`; its output is ``feature_dim``-d).
        dim: embedding size (128). hidden_dim: MLP hidden size. queue_size: negatives kept (wraps around; any
        size works, no divisibility requirement). momentum: key-encoder EMA factor m. temperature: T.
        shuffle_bn: shuffle the key batch across ranks under DDP (world size > 1).

    ``encoder_q`` is the query backbone (tap its layers for the spatial loss); ``head_q`` the MLP head;
    ``encoder_k``/``head_k`` their momentum copies. ``forward(q, k)`` returns ``(loss, logits, keys)``.
    """

    def __init__(self, backbone=r3d18_backbone, feature_dim: int = 512, dim: int = 128, hidden_dim: int = 2048,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 shuffle_bn: bool = True):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum: expected in [0, 1], got {momentum}")
        self.momentum, self.temperature, self.shuffle_bn = float(momentum), float(temperature), bool(shuffle_bn)
        self.encoder_q = backbone()
        self.head_q = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(inplace=True),
                                    nn.Linear(hidden_dim, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.head_k = copy.deepcopy(self.head_q)
        for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return self.queue.shape[1]

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.momentum
        for pq, pk in zip(list(self.encoder_q.parameters()) + list(self.head_q.parameters()),
                          list(self.encoder_k.parameters()) + list(self.head_k.parameters())):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (n, dim) -- already gathered from all ranks -- at the pointer, wrapping around."""
        keys = keys.detach().to(self.queue.dtype)
        K = self.queue_size
        n = keys.shape[0]
        if n >= K:
            keys, n = keys[-K:], K
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=self.queue.device)) % K
        self.queue[:, idx] = keys.T
        self.queue_ptr.fill_((ptr + n) % K)

    @torch.no_grad()
    def _keys(self, im_k: torch.Tensor) -> torch.Tensor:
        world = _dist_world()
        if world > 1 and self.shuffle_bn:
            x = concat_all_gather(im_k)
            n_all = x.shape[0]
            perm = torch.randperm(n_all, device=x.device)
            dist.broadcast(perm, src=0)
            unshuffle = torch.argsort(perm)
            rank, per = dist.get_rank(), im_k.shape[0]
            mine = perm.view(world, per)[rank]
            k = F.normalize(self.head_k(self.encoder_k(x[mine])), dim=1)
            k_all = concat_all_gather(k)
            return k_all[unshuffle.view(world, per)[rank]]
        return F.normalize(self.head_k(self.encoder_k(im_k)), dim=1)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, update: bool = True):
        """Contrastive loss of a batch of query/key clips (B, 3, T, H, W).

        With ``update`` (training) the momentum encoder is updated before the keys are computed and the keys
        are enqueued afterwards. Returns ``(loss, logits, keys)``; logits[:, 0] are the positives.
        """
        q = F.normalize(self.head_q(self.encoder_q(im_q)), dim=1)
        with torch.no_grad():
            if update:
                self.momentum_update()
            k = self._keys(im_k)
        q32, k32 = q.float(), k.float()
        l_pos = (q32 * k32).sum(1, keepdim=True)
        l_neg = q32 @ self.queue.clone().detach().float()
        logits = torch.cat([l_pos, l_neg], 1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if update:
            self.enqueue(concat_all_gather(k32))
        return loss, logits, k32
