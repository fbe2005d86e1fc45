"""The one lazy-export mechanism (emolens._lazy.attach): every lazy package resolves each public
name to its defining module, lists it in dir(), and no public name is hidden by a submodule."""
from __future__ import annotations

import importlib
import pkgutil
import sys
import types

import pytest

from emolens._lazy import CallablePackage, attach
from emolens.errors import EmolensError

LAZY_PACKAGES = ["emolens", "emolens.compare", "emolens.extraction", "emolens.readout",
                 "emolens.steering"]


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_every_public_name_resolves_from_its_module(name):
    pkg = importlib.import_module(name)
    table = pkg._NAMES
    assert set(table) <= set(pkg.__all__)
    for public, where in table.items():
        value = getattr(pkg, public)
        assert value is getattr(importlib.import_module(where), public), public
        assert not isinstance(value, types.ModuleType), public
        assert public in dir(pkg)
    with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'no_such_name'"):
        pkg.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_no_public_name_is_also_a_submodule(name):
    """Importing a submodule sets the package attribute to it, hiding a same-named function
    (how steering.sweep was once shadowed)."""
    pkg = importlib.import_module(name)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    assert not submodules & set(pkg._NAMES)


def test_top_level_modules_and_the_callable_compare_package():
    import emolens

    for sub in emolens._MODULES:
        assert getattr(emolens, sub) is importlib.import_module(f"emolens.{sub}")
    import emolens.compare.similarity  # noqa: F401  (a submodule import keeps the call working)

    assert isinstance(emolens.compare, CallablePackage) and callable(emolens.compare)
    assert emolens.compare.compare is importlib.import_module("emolens.compare.core").compare
    assert not callable(emolens.extraction)


def test_attach_call_must_name_a_public_name():
    mod = types.ModuleType("emolens_lazy_probe")
    sys.modules[mod.__name__] = mod
    try:
        with pytest.raises(EmolensError, match="'nope' is not one of"):
            attach(mod.__name__, {"f": "math"}, call="nope")
        getattr_, _ = attach(mod.__name__, {"sqrt": "math"}, call="sqrt")
        mod.__getattr__ = getattr_
        assert mod(16.0) == 4.0
    finally:
        del sys.modules[mod.__name__]
