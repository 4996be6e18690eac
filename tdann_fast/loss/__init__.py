"""The TDANN spatial correlation loss: functional form, ``SpatialLoss`` module, reference and fast paths.

* ``gather.py`` -- reading the sampled units of an activation; their gradient goes into the activation's own
  gradient at those units only (``dense_gradient()`` for the activation-sized formulation);
* ``reference.py`` -- plain autograd PyTorch: the definition every fast path is tested against;
* ``batched.py`` -- the optimised PyTorch path (CPU, and any device without Triton);
* ``triton_kernels.py`` / ``triton_ops.py`` -- fused Triton kernels (CUDA), one launch over all layers;
* ``functional.py`` -- ``spatial_correlation_loss`` and the backend dispatch;
* ``module.py`` -- ``SpatialLoss``.
"""
from .functional import resolve_backend, spatial_correlation_loss
from .gather import tap
from .module import SpatialLoss

__all__ = ["SpatialLoss", "spatial_correlation_loss", "resolve_backend", "tap"]
