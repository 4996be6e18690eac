"""Grating stimuli of the analysis (DESIGN §7): re-exported from their one home, :mod:`tdann_fast.data.gratings`
(the generator; spatial frequencies in cycles per image width, temporal frequencies in cycles per frame, y up) and
:mod:`tdann_fast.data.normalization` (the normalisation constants). Kept so that
``from tdann_fast.analysis.stimuli import DriftingGratings`` goes on working.
"""
from __future__ import annotations

from tdann_fast.data.gratings import DriftingGratings, StaticGratings
from tdann_fast.data.normalization import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD

__all__ = ["DriftingGratings", "StaticGratings", "KINETICS_MEAN", "KINETICS_STD", "IMAGENET_MEAN", "IMAGENET_STD"]
