"""Models: feature taps on any network, and the MoCo v2 wrapper around torchvision's r3d_18."""
from .moco import MoCo, r3d18_backbone
from .taps import FeatureTaps

__all__ = ["FeatureTaps", "MoCo", "r3d18_backbone"]
