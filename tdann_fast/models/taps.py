"""``FeatureTaps``: capture the outputs of named submodules of any model with forward hooks."""
from __future__ import annotations

import difflib
from typing import Dict, Iterable, List

import torch
from torch import nn

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
    The captured tensors keep their autograd graph unless ``detach=True``. When a module runs more than once per
    forward, the last output wins.
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
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in zip(names, modules)]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[name] = output.detach() if self.detach else output

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
