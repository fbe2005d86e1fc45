"""The one lazy-export mechanism of emolens's packages.

A package lists ``public name -> defining module`` and calls ``attach(__name__, names)``: its
``__getattr__`` imports the defining module on first access (so ``import emolens`` and the
command-line parser stay free of torch), caches the value, and ``__dir__`` lists every name.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, names: Mapping[str, str], modules: tuple[str, ...] = ()
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each public name to the module
    defining it; ``modules`` are submodules importable as attributes (``emolens.geometry``)."""
    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names) | set(modules))

    return __getattr__, __dir__
