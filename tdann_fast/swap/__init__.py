"""Position swap pre-optimisation (DESIGN §5): NumPy reference, C++ (OpenMP) and CUDA backends.

>>> new_positions, stats = optimize_positions(responses, positions, neighbourhood_width_mm=2.1, steps=100_000)
"""
from .api import SwapStats, optimize_positions, optimize_sheet_positions
from .backend import available_backends

__all__ = ["SwapStats", "optimize_positions", "optimize_sheet_positions", "available_backends"]
