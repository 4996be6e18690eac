"""Tasks: what the six stages train, as one small interface with two implementations.

A task supplies the model, the data and its two views, the contrastive objective and the stage-3 probe set; the
stages, the step loop and the checkpoint layout (:mod:`tdann_fast.train.stages`, :mod:`~tdann_fast.train.loop`,
:mod:`~tdann_fast.train.checkpoint`) are the same for every task.

========================  ==========================================  =============================================
``task`` (config key)     model                                       data, views, probe set
========================  ==========================================  =============================================
``video_moco``            MoCo v2 on torchvision ``r3d_18`` (MT paper)  clips (B, 3, T, H, W); query and key clips of
                                                                      one video; probe: centre-cropped training
                                                                      clips and/or drifting gratings
``image_simclr``          SimCLR on torchvision ``resnet18`` (ventral  images (B, 3, H, W); two augmentations of one
                          TDANN: V1 at layer2, VTC at layer4)          image; probe: centre-cropped training images
                                                                      and/or static gratings
========================  ==========================================  =============================================

The interface (:class:`Task`), implemented by :class:`~tdann_fast.train.tasks.video_moco.VideoMoco` and
:class:`~tdann_fast.train.tasks.image_simclr.ImageSimclr`:

* ``build_data(seed, world_size)`` -> ``(source, dataset, collate)``: the training samples; a dataset item ends
  with its fault records, the collate function keeps them last;
* ``build_model(num_samples)`` -> the whole trained module (encoder, heads, queues);
* ``encoder(model)`` -> the network whose layers get cortical sheets;
* ``views(batch, generator)`` -> the two augmented views on the training device;
* ``objective(model, views)`` -> ``(loss, aux)``; ``step_metrics(loss, aux)`` / ``state_metrics(model)`` the
  values logged for a step;
* ``sheets(layers)`` -> the preset's retinotopic sheets for the layers;
* ``probe_batches(dataset, count_faults)`` and ``describe_probe(layers)``: the stage-3 probe set and its record;
* ``backbone()`` (static) and ``encoder_prefix``: a fresh encoder and its prefix in the model's state dict, from
  which the shared ``encoder_from_state(model_state)`` (class method) gives a checkpoint's trained encoder, for
  the analysis.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

__all__ = ["TASKS", "Task", "task_class", "make_task"]

TASKS = {"video_moco": "tdann_fast.train.tasks.video_moco:VideoMoco",
         "image_simclr": "tdann_fast.train.tasks.image_simclr:ImageSimclr"}


class Task:
    """Base of the tasks (see the module docstring). ``cfg`` is the run's :class:`TrainConfig`, ``device`` the
    training device, ``rank`` this process's rank."""

    name = ""               # the config's ``task`` value
    arch = ""               # the encoder's torchvision name
    sample_name = ""        # "clips" / "images": the unit of the throughput log (``<sample_name>_per_s``)
    loss_name = ""          # the logged name of the contrastive loss ("loss_moco", "loss_simclr")
    encoder_prefix = ""     # the encoder's prefix in the trained module's state dict ("encoder_q.", "encoder.")

    def __init__(self, cfg, device, rank: int = 0):
        self.cfg, self.device, self.rank = cfg, device, int(rank)
        self.augment = None

    # the parts every task provides
    def build_data(self, seed: int, world_size: int):
        raise NotImplementedError

    def build_model(self, num_samples: int):
        raise NotImplementedError

    def encoder(self, model):
        raise NotImplementedError

    def views(self, batch, generator):
        raise NotImplementedError

    def objective(self, model, views) -> tuple:
        raise NotImplementedError

    def step_metrics(self, loss, aux) -> dict:
        raise NotImplementedError

    def state_metrics(self, model) -> dict:
        return {}

    def sheets(self, layers) -> dict:
        raise NotImplementedError

    def grating_batches(self) -> Iterator:
        raise NotImplementedError

    def describe_probe(self, layers) -> dict:
        """The record of the stage-3 probe set (``extra["probe"]`` of the checkpoints, ``swap_stats.json``): which
        stimuli, how many, in which units, and the layers whose positions were swapped on it (none swapped: no
        probe set was shown, the counts are 0)."""
        raise NotImplementedError

    @property
    def contrastive_weight(self) -> float:
        """Weight of the contrastive loss in stages 5-6 (stage 1 always uses 1)."""
        raise NotImplementedError

    @staticmethod
    def backbone():
        """A fresh encoder of the task's architecture (``fc`` = Identity), for :meth:`encoder_from_state`."""
        raise NotImplementedError

    # shared by the tasks
    @classmethod
    def encoder_from_state(cls, model_state: Mapping[str, Any], path: str = ""):
        """The trained encoder (:meth:`backbone` with the ``encoder_prefix`` entries of ``model_state``), in eval
        mode; a state without them raises :class:`~tdann_fast.errors.DamagedFileError` naming ``path``."""
        from tdann_fast.errors import DamagedFileError

        encoder = cls.backbone()
        prefix = cls.encoder_prefix
        state = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
        if not state:
            raise DamagedFileError(path, f"holds no {prefix[:-1]} weights")
        encoder.load_state_dict(state)
        return encoder.eval()

    def epoch_length(self, source, world_size: int) -> int:
        """Samples in a (virtual) epoch: ``data.clips_per_epoch`` or one per source item, at least one batch per
        rank."""
        return max(self.cfg.data.clips_per_epoch or len(source), self.cfg.batch_size * world_size)

    def probe_batches(self, dataset, count_faults: Callable) -> Iterator:
        """The stage-3 probe set as normalised input batches: the gratings (when ``swap.probe`` asks for them),
        then the centre crops of the first view of training samples ``0..probe_clips-1``."""
        import torch

        from tdann_fast.train.config import probe_counts

        s = self.cfg.swap
        n_samples, n_gratings = probe_counts(self.cfg)
        if n_gratings:
            yield from self.grating_batches()
        for start in range(0, n_samples, s.probe_batch_size):
            items = []
            for i in range(start, min(start + s.probe_batch_size, n_samples)):
                item = dataset[i]  # any index: samples past the sources draw again from them
                count_faults(item[-1])
                items.append(item[0])
            yield self.augment.center(torch.stack(items))


def task_class(name: str):
    """The :class:`Task` class of a config's ``task`` value (imported on first use)."""
    import importlib

    if name not in TASKS:
        raise ValueError(f"task: got {name!r}; expected one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_task(cfg, device, rank: int = 0) -> Task:
    """The task of ``cfg`` (``cfg.task``) for this process."""
    return task_class(cfg.task)(cfg, device, rank)
