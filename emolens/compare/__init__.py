"""Comparing models: the same measures on each, and the similarity of their emotion geometry.

``compare(models=[...], corpus)`` (``emolens compare --models A B --out DIR``): per model,
test-split accuracy and the shuffled control, PC1/PC2 explained variance and their correlation
with published norms; between models, RSA (``rsa``, ``registry_rsa``). See docs/compare.md.
"""
import sys
import types
from typing import TYPE_CHECKING, Any

_NAMES = {
    "CPU_EMOTIONS": "emolens.compare.core",
    "PRESETS": "emolens.compare.core",
    "ComparisonResult": "emolens.compare.core",
    "Preset": "emolens.compare.core",
    "compare": "emolens.compare.core",
    "measure_registry": "emolens.compare.core",
    "RSAResult": "emolens.compare.similarity",
    "cosine_matrix": "emolens.compare.similarity",
    "registry_rsa": "emolens.compare.similarity",
    "rsa": "emolens.compare.similarity",
}
__all__ = ["CPU_EMOTIONS", "PRESETS", "ComparisonResult", "Preset", "RSAResult", "compare",
           "cosine_matrix", "measure_registry", "registry_rsa", "rsa"]


def __getattr__(name: str) -> Any:
    # lazy: ``emolens compare --help`` must not import torch
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'emolens.compare' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``emolens.compare`` is this package once any of its submodules is imported (Python sets
    the attribute on the parent), so the package itself forwards calls to ``compare``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from emolens.compare.core import compare

        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if TYPE_CHECKING:  # pragma: no cover
    from emolens.compare.core import (
        CPU_EMOTIONS,
        PRESETS,
        ComparisonResult,
        Preset,
        compare,
        measure_registry,
    )
    from emolens.compare.similarity import RSAResult, cosine_matrix, registry_rsa, rsa
