"""The one lazy-export mechanism of emolens's packages (the top level included).

A package lists ``public name -> defining module`` and calls ``attach(__name__, names)``: its
``__getattr__`` imports the defining module on first access (so ``import emolens`` and the
command-line parser stay free of torch), caches the value, and ``__dir__`` lists every name.

``call=`` makes the package itself callable, forwarding to one of its names: ``emolens.compare``
is the comparison package and ``emolens.compare(models, ...)`` calls
``emolens.compare.compare``. It is done the way Python documents for customising a module
(assigning a ``types.ModuleType`` subclass to the module's ``__class__``); the package stays an
ordinary module for imports, ``dir`` and attribute access.

A public name must not also be a submodule of its package: importing the submodule sets the
package attribute to the module and hides the function (tests/unit/test_lazy.py checks every
lazy package).
"""
from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

from emolens.errors import EmolensError


class CallablePackage(types.ModuleType):
    """A package module whose call forwards to its public name ``__lazy_call__``."""

    __lazy_call__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__lazy_call__)(*args, **kwargs)


def attach(package: str, names: Mapping[str, str], modules: tuple[str, ...] = (), *,
           call: str | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each public name to the module
    defining it; ``modules`` are submodules importable as attributes (``emolens.geometry``);
    ``call`` (one of ``names``) makes the package callable as that function."""
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            setattr(module, name, value)
            return value
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(names) | set(modules))

    if call is not None:
        if call not in names:
            raise EmolensError(f"attach({package!r}, call={call!r}): {call!r} is not one of the "
                             "package's public names")
        module.__class__ = CallablePackage
        module.__lazy_call__ = call  # type: ignore[attr-defined]
    return __getattr__, __dir__
