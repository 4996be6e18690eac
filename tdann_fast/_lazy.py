"""Lazy exports of a package: names are imported from their submodule on first use, so importing the package
stays cheap (no torch import just to read a config or a table)."""
from importlib import import_module
from typing import Callable, Dict, Tuple


def lazy_exports(package: str, table: Dict[str, str]) -> Tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose names ``{name: submodule}`` live in ``package.submodule``."""
    namespace = import_module(package).__dict__

    def __getattr__(name):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(table)

    return __getattr__, __dir__
