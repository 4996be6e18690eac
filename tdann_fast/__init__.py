"""tdann_fast: topographic deep networks (TDANN) in PyTorch.

Public API (imported lazily, so ``import tdann_fast`` has no side effects and stays cheap):

* :class:`CorticalSheet` -- unit positions on a simulated cortical sheet, with precomputed neighbourhoods.
* :mod:`presets` -- ``r3d18_mt()`` and ``resnet18_tdann()`` layer tables; ``vit_b_16()`` and ``linear_sheets()``
  for token (B, L, D) and fully connected (B, N) layers.
* :func:`spatial_correlation_loss` and :class:`SpatialLoss` -- the TDANN spatial correlation loss.
* :class:`FeatureTaps` -- capture named submodule outputs of any model.
* :func:`optimize_positions` / :func:`optimize_sheet_positions` -- the position swap pre-optimisation.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "CorticalSheet": "tdann_fast.sheet",
    "spatial_correlation_loss": "tdann_fast.loss",
    "SpatialLoss": "tdann_fast.loss",
    "FeatureTaps": "tdann_fast.models.taps",
    "optimize_positions": "tdann_fast.swap",
    "optimize_sheet_positions": "tdann_fast.swap",
    "SwapStats": "tdann_fast.swap",
    "presets": "tdann_fast.presets",
    "analysis": "tdann_fast.analysis",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tdann_fast' has no attribute {name!r}")
    module = import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
