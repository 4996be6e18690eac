"""Input normalisation constants (per RGB channel, for pixel values in [0, 1]): the one place they are written.

* ``KINETICS_MEAN`` / ``KINETICS_STD``: torchvision's Kinetics-400 video normalisation (the ``r3d_18`` video
  models; the training default ``data.mean`` / ``data.std`` and the drifting gratings of the analysis).
* ``IMAGENET_MEAN`` / ``IMAGENET_STD``: torchvision's ImageNet normalisation (image models; the static gratings).

Plain tuples, no imports: reading a config never imports torch.
"""
from __future__ import annotations

__all__ = ["KINETICS_MEAN", "KINETICS_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
