"""Two clips (query, key) per sample with the sample's fault records, and a resumable distributed sampler.

A sample carries the faults met while making it (:class:`~tdann_fast.data.VideoFault`, kinds ``"unreadable"``
and ``"truncated"``), so that faults met inside DataLoader worker processes reach the main process with the
batches: counters kept by a source in a worker never do.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .decode import TruncatedVideoError, VideoReadError
from .video_folder import VideoFault


class ClipPairDataset(Dataset):
    """Sample ``i`` -> two random clips (query, key) of ``frames`` frames with ``stride`` from one video.

    ``i`` may exceed the number of videos (a virtual epoch, see :class:`ResumableSampler`): video ``i % len``,
    clip starts drawn from a generator seeded by ``(seed, i)`` (``(seed, i, hop)`` for the ``hop``-th video tried
    after unreadable ones), so a sample is a pure function of its index and the frame counts the source knows.
    A clip longer than its video wraps around modulo the video's frame count.

    Returns ``(query, key, faults)``: uint8 tensors (T, H, W, 3) and a tuple of
    :class:`~tdann_fast.data.VideoFault` (empty for a clean sample). A video that fails to decode is skipped (the
    next one is used) and recorded as ``"unreadable"``; a video that decodes fewer frames than its index claimed is
    recorded as ``"truncated"`` and both clips are drawn again within the frames that decode (once per process
    and video: the source knows the real count from then on).
    """

    def __init__(self, source, frames: int, stride: int = 1, length: int | None = None, seed: int = 0,
                 max_retries: int = 10):
        if len(source) == 0:
            raise ValueError("source: no readable videos")
        if frames < 1 or stride < 1:
            raise ValueError(f"frames/stride: expected positive integers, got {frames}/{stride}")
        if max_retries < 1:
            raise ValueError(f"max_retries: expected a positive integer, got {max_retries!r}")
        self.source, self.frames, self.stride = source, int(frames), int(stride)
        self.length = int(length) if length else len(source)
        self.seed, self.max_retries = int(seed), int(max_retries)

    def __len__(self) -> int:
        return self.length

    def _indices(self, rng: np.random.Generator, n_frames: int) -> np.ndarray:
        span = (self.frames - 1) * self.stride + 1
        start = int(rng.integers(0, max(1, n_frames - span + 1)))
        return start + self.stride * np.arange(self.frames)  # wraps modulo n_frames in the source if too short

    def __getitem__(self, i: int):
        i = int(i)
        faults: list[VideoFault] = []
        v, hop = i % len(self.source), 0
        for _ in range(self.max_retries):
            rng = np.random.default_rng([self.seed, i] if hop == 0 else [self.seed, i, hop])
            n = self.source.num_frames(v)
            q_idx, k_idx = self._indices(rng, n), self._indices(rng, n)
            try:
                q = self.source.read_clip(v, q_idx)
                k = self.source.read_clip(v, k_idx)
            except TruncatedVideoError as exc:  # the source now knows the real count: draw again, same video
                faults.append(VideoFault(self.source.name(v), "truncated", exc.detail))
                continue
            except VideoReadError as exc:
                faults.append(VideoFault(self.source.name(v), "unreadable", exc.detail))
                hop += 1
                v = (v + hop) % len(self.source)
                continue
            return (torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(np.ascontiguousarray(k)),
                    tuple(faults))
        raise RuntimeError(f"ClipPairDataset: sample {i} failed {self.max_retries} times in a row: "
                           + "; ".join(f"{f.kind} {f.path} ({f.detail})" for f in faults[-3:]))


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded indices of a virtual epoch, resumable mid-epoch.

    Every rank sees ``len(dataset) // world`` indices per epoch (drop-last, so batches stay equal across
    ranks as shuffle-BN requires). Yields ``epoch * len + j`` so the dataset can seed each sample by epoch too.
    ``state_dict()``/``load_state_dict()`` hold ``epoch`` and ``offset`` (samples already consumed this epoch).
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        if length < num_replicas:
            raise ValueError(f"length: {length} samples cannot be split over {num_replicas} ranks")
        self.length, self.num_replicas, self.rank, self.seed = int(length), int(num_replicas), int(rank), int(seed)
        self.epoch, self.offset = 0, 0

    @property
    def per_rank(self) -> int:
        return self.length // self.num_replicas

    def __len__(self) -> int:
        return self.per_rank - self.offset

    def set_epoch(self, epoch: int, offset: int = 0) -> None:
        self.epoch, self.offset = int(epoch), int(offset)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.length, generator=g)[: self.per_rank * self.num_replicas]
        mine = perm[self.rank::self.num_replicas][self.offset:]
        base = self.epoch * self.length
        return iter((base + int(j) for j in mine))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"], state.get("offset", 0))


def collate_pairs(batch):
    """``[(query, key, faults), ...]`` -> ``(query_batch, key_batch, faults)``: stacked clips (B, T, H, W, 3) and
    one flat list of the batch's :class:`~tdann_fast.data.VideoFault` records."""
    if not batch or any(len(sample) != 3 for sample in batch):
        raise ValueError("batch: expected a non-empty list of (query, key, faults) samples from ClipPairDataset")
    queries, keys, faults = zip(*batch)
    return torch.stack(queries), torch.stack(keys), [f for sample in faults for f in sample]
