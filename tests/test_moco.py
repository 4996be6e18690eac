"""MoCo v2 wrapper: queue wrap-around without divisibility, momentum update, single-process forward."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tdann_fast.models.moco import MoCo


def tiny_backbone():
    return nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten())


def make(queue=7, **kw):
    return MoCo(backbone=tiny_backbone, feature_dim=8, dim=4, hidden_dim=16, queue_size=queue, **kw)


def test_queue_wraps_without_divisibility(rng):
    m = make(queue=7)
    keys = [F.normalize(torch.from_numpy(rng.normal(size=(3, 4))).float(), dim=1) for _ in range(3)]
    for k in keys:
        m.enqueue(k)
    assert int(m.queue_ptr) == (9 % 7)
    allk = torch.cat(keys)  # 9 keys into 7 slots: slots 0,1 hold keys 7,8; slots 2..6 keys 2..6
    torch.testing.assert_close(m.queue[:, 2:7].T, allk[2:7])
    torch.testing.assert_close(m.queue[:, 0:2].T, allk[7:9])
    big = F.normalize(torch.randn(20, 4), dim=1)  # more keys than slots: the last 7 are kept
    m.enqueue(big)
    assert sorted(map(tuple, m.queue.T.tolist())) == sorted(map(tuple, big[-7:].tolist()))


def test_forward_single_process_updates_queue_and_momentum():
    m = make(queue=10, momentum=0.5)
    q = torch.randn(4, 3, 2, 8, 8)
    k = torch.randn(4, 3, 2, 8, 8)
    before_k = [p.clone() for p in m.encoder_k.parameters()]
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(1.0)
    loss, logits, keys = m(q, k)
    assert logits.shape == (4, 11) and torch.isfinite(loss)
    assert int(m.queue_ptr) == 4
    torch.testing.assert_close(m.queue[:, :4].T, keys)
    for pb, pk, pq in zip(before_k, m.encoder_k.parameters(), m.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.5 * pb + 0.5 * pq)
    loss.backward()
    assert all(p.grad is None for p in m.encoder_k.parameters())
    assert all(p.grad is not None for p in m.encoder_q.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="queue_size"):
        make(queue=0)
    with pytest.raises(ValueError, match="temperature"):
        make(temperature=0)
