"""The TDANN spatial correlation loss: functional form, ``SpatialLoss`` module, reference and fast paths.

* ``reference.py`` -- batched PyTorch (the CPU path and the definition every fast path is tested against);
* ``gather.py`` -- reading the sampled units, and the recycled CPU gradient blocks (``empty_cache``);
* ``triton_kernels.py`` / ``triton_ops.py`` -- fused Triton kernels (CUDA), one launch over all layers;
* ``functional.py`` -- ``spatial_correlation_loss`` and the backend dispatch;
* ``module.py`` -- ``SpatialLoss``.
"""
from .functional import resolve_backend, spatial_correlation_loss
from .gather import empty_cache
from .module import SpatialLoss

__all__ = ["SpatialLoss", "spatial_correlation_loss", "resolve_backend", "empty_cache"]
