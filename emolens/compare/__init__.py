"""Comparing models: the same measures on each, and the similarity of their emotion geometry.

``compare(models=[...], corpus)`` (``emolens compare --models A B --out DIR``): per model,
test-split accuracy and the shuffled control, PC1/PC2 explained variance and their correlation
with published norms; between models, RSA (``rsa``, ``registry_rsa``). See docs/compare.md.

The package is callable: ``emolens.compare(...)`` is ``emolens.compare.compare(...)``
(``emolens._lazy.attach(call=...)``). Names load lazily: ``emolens compare --help`` imports no
torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emolens._lazy import attach

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
__all__ = sorted(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES, call="compare")

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
