"""Extraction: activations -> directions (streaming accumulators, methods)."""
from emolens.extraction.accumulator import ClassMeanAccumulator, MomentAccumulator
from emolens.extraction.extract import extract_emotions, stream_sites
from emolens.extraction.methods import (
    METHODS,
    ExtractionData,
    ExtractionMethod,
    get_method,
    register_method,
)
from emolens.extraction.positions import POLICIES, position_mask

__all__ = [
    "METHODS",
    "POLICIES",
    "ClassMeanAccumulator",
    "ExtractionData",
    "ExtractionMethod",
    "MomentAccumulator",
    "extract_emotions",
    "get_method",
    "position_mask",
    "register_method",
    "stream_sites",
]
