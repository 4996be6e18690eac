"""Models: feature taps on any network, MoCo v2 around torchvision's r3d_18 (video) and SimCLR around its
resnet18 (images).

Imported lazily (torchvision is only loaded when the MoCo or SimCLR pieces are used).
"""
from importlib import import_module

from .taps import FeatureTaps

_LAZY = {"MoCo": "tdann_fast.models.moco", "r3d18_backbone": "tdann_fast.models.moco",
         "SimCLR": "tdann_fast.models.simclr", "resnet18_backbone": "tdann_fast.models.simclr",
         "nt_xent": "tdann_fast.models.simclr"}

__all__ = ["FeatureTaps", "MoCo", "r3d18_backbone", "SimCLR", "resnet18_backbone", "nt_xent"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'tdann_fast.models' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
