"""Position policies of extraction: the names of ``emolens.positions`` (the one vocabulary).

Kept as an import path (``emolens.extraction.positions.position_mask``, documented in
docs/evaluate.md); everything here is ``emolens.positions``. A policy is a string (it is recorded
in every registry): ``"content"`` (default), ``"all"``, ``"last"``, ``"reply"`` (chat input only),
``"reply_or_last"``, ``"from:k"``.
"""
from __future__ import annotations

from emolens.positions import POLICIES, position_mask
from emolens.positions import validate_name as validate_policy

__all__ = ["POLICIES", "position_mask", "validate_policy"]
