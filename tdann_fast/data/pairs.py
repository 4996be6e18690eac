"""Two clips (query, key) per sample, and a resumable distributed sampler."""
from __future__ import annotations


from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .video_folder import VideoReadError


class ClipPairDataset(Dataset):
    """Sample ``i`` -> two random clips (query, key) of ``frames`` frames with ``stride`` from one video.

    ``i`` may exceed the number of videos (a virtual epoch, see :class:`ResumableSampler`): video ``i % len``,
    clip starts drawn from a generator seeded by ``(seed, i)``, so a sample is a pure function of its index.
    Returns ``(query, key)`` uint8 tensors (T, H, W, 3). A video that fails to decode is skipped (the next one
    is used) with a warning.
    """

    def __init__(self, source, frames: int, stride: int = 1, length: int | None = None, seed: int = 0,
                 max_retries: int = 10):
        if len(source) == 0:
            raise ValueError("source: no readable videos")
        if frames < 1 or stride < 1:
            raise ValueError(f"frames/stride: expected positive integers, got {frames}/{stride}")
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
        rng = np.random.default_rng([self.seed, i])
        v = i % len(self.source)
        for attempt in range(self.max_retries):
            try:
                n = self.source.num_frames(v)
                q = self.source.read_clip(v, self._indices(rng, n))
                k = self.source.read_clip(v, self._indices(rng, n))
                return torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(np.ascontiguousarray(k))
            except VideoReadError:
                v = (v + 1 + attempt) % len(self.source)
        raise RuntimeError(f"ClipPairDataset: {self.max_retries} consecutive videos failed to decode")


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
    q, k = zip(*batch)
    return torch.stack(q), torch.stack(k)


