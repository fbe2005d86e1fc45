"""The study's emotion vocabulary: the 12 core emotions most of its figures use."""
from __future__ import annotations

CORE_EMOTIONS: tuple[str, ...] = (
    "happy", "inspired", "loving", "proud", "calm", "desperate", "angry", "guilty", "sad",
    "afraid", "nervous", "surprised")
"""The 12 emotions of most of the study's figures (Sofroniew, Lindsey et al. 2026)."""
