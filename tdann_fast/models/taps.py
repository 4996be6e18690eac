"""``FeatureTaps``: capture the outputs of named submodules of any model with forward hooks."""
from __future__ import annotations

import difflib
import weakref
from typing import Dict, Iterable, List

import torch
from torch import nn

from ..loss.gather import tap

__all__ = ["FeatureTaps", "resolve_module"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module) and inner is not model:
            model = inner
        else:
            return model


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (wrapper prefixes such as ``module.`` are accepted and ignored).

    Raises a KeyError naming the unknown layer and listing close names.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer names must be non-empty strings, got {name!r}")
    base = _unwrap(model)
    stripped = name
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if stripped.startswith(prefix):
                stripped, changed = stripped[len(prefix):], True
    modules = dict(base.named_modules())
    if stripped in modules and stripped != "":
        return modules[stripped]
    close = difflib.get_close_matches(stripped, [n for n in modules if n], n=5, cutoff=0.5)
    hint = f"; close names: {close}" if close else ""
    raise KeyError(f"unknown layer name {name!r} in {type(base).__name__}{hint}")


class FeatureTaps:
    """Forward hooks that store the outputs of the named submodules in :attr:`features`.

    >>> with FeatureTaps(model, ["layer3.1"]) as taps:
    ...     model(x)
    ...     acts = taps.features["layer3.1"]

    Hooks are registered on construction and removed by :meth:`remove` (or on leaving the ``with`` block;
    what was captured stays readable until :meth:`clear`).
    The captured tensors keep their autograd graph unless ``detach=True``; each capture goes through
    :func:`tdann_fast.loss.gather.tap` (the module's output is replaced by the tapped tensor: same values and
    storage), so a spatial loss on it adds its gradient at the sampled units only. When a module runs more than once per
    forward, the last output wins.

    Each hook is bound to the module object it was made for: a ``copy.deepcopy`` of the model (a MoCo/BYOL/DINO
    teacher, ``torch.optim.swa_utils.AveragedModel``) carries the hook along, but when the copy runs, the hook
    recognises a module it was not made for and stores nothing, so the teacher never overwrites these features.
    """

    def __init__(self, model: nn.Module, layer_names: Iterable[str], detach: bool = False):
        if isinstance(layer_names, str):
            layer_names = [layer_names]
        names: List[str] = list(layer_names)
        if not names:
            raise ValueError("layer_names must name at least one layer")
        if len(set(names)) != len(names):
            raise ValueError(f"layer_names has duplicates: {names}")
        self.layer_names = names
        self.detach = bool(detach)
        self.features: Dict[str, torch.Tensor] = {}
        modules = [resolve_module(model, n) for n in names]  # all names checked before any hook is added
        self._handles = [m.register_forward_hook(self._hook(n, m)) for n, m in zip(names, modules)]

    def _hook(self, name: str, module: nn.Module):
        bound = weakref.ref(module)

        def hook(called_by, _inputs, output):
            if called_by is not bound():  # a copy of the module (deepcopy carries hooks along): not ours
                return None
            first = output[0] if isinstance(output, (tuple, list)) else output
            if self.detach:
                self.features[name] = first.detach()
                return None
            tapped = tap(first)  # the spatial loss's gradient goes into this tensor's own gradient (loss/gather.py)
            self.features[name] = tapped
            if tapped is first:
                return None
            if isinstance(output, (tuple, list)):
                return type(output)([tapped, *output[1:]])
            return tapped

        return hook

    def clear(self) -> None:
        """Forget the captured tensors (frees their graphs)."""
        self.features = {}

    def remove(self) -> None:
        """Remove the hooks (the tensors captured so far stay in :attr:`features` until :meth:`clear`)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTaps({self.layer_names}, active={self.active})"
