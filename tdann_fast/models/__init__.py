"""Models: feature taps on any network, and the MoCo v2 wrapper around torchvision's r3d_18.

Imported lazily (torchvision is only loaded when the MoCo pieces are used).
"""
from importlib import import_module

from .taps import FeatureTaps

_LAZY = {"MoCo": "tdann_fast.models.moco", "r3d18_backbone": "tdann_fast.models.moco"}

__all__ = ["FeatureTaps", "MoCo", "r3d18_backbone"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'tdann_fast.models' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
