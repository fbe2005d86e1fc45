"""Extraction: activations -> directions (streaming accumulators, methods)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from emolens._lazy import attach

_NAMES = {
    "ClassMeanAccumulator": "emolens.extraction.accumulator",
    "MomentAccumulator": "emolens.extraction.accumulator",
    "extract_emotions": "emolens.extraction.extract",
    "fit_directions": "emolens.extraction.extract",
    "stream_sites": "emolens.extraction.extract",
    "stream_neutral_moments": "emolens.extraction.extract",
    "stream_text_means": "emolens.extraction.extract",
    "TextMeans": "emolens.extraction.extract",
    "SpeakerCosines": "emolens.extraction.speakers",
    "extract_speaker_emotions": "emolens.extraction.speakers",
    "speaker_story_cosines": "emolens.extraction.speakers",
    "speaker_experiment": "emolens.extraction.speakers",
    "ExtractionData": "emolens.extraction.methods",
    "ExtractionMethod": "emolens.extraction.methods",
    "METHODS": "emolens.extraction.methods",
    "get_method": "emolens.extraction.methods",
    "register_method": "emolens.extraction.methods",
    "POLICIES": "emolens.positions",
    "position_mask": "emolens.positions",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from emolens.extraction.accumulator import ClassMeanAccumulator, MomentAccumulator
    from emolens.extraction.extract import (
        TextMeans,
        extract_emotions,
        fit_directions,
        stream_neutral_moments,
        stream_sites,
        stream_text_means,
    )
    from emolens.extraction.methods import (
        METHODS,
        ExtractionData,
        ExtractionMethod,
        get_method,
        register_method,
    )
    from emolens.extraction.speakers import (
        SpeakerCosines,
        extract_speaker_emotions,
        speaker_experiment,
        speaker_story_cosines,
    )
    from emolens.positions import POLICIES, position_mask
