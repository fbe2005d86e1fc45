"""Stimuli: the bundled emotion corpus, its loader and validator, and the story generator.

``load_corpus()`` returns the bundled ``Corpus``; ``Corpus.from_jsonl`` / ``Corpus.from_records``
load your own; ``generate_stories`` has any chat model write new stories in the study's style.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emolens.stimuli.corpus import (
    AffectRatings,
    Corpus,
    Record,
    available_corpora,
    load_affect_ratings,
    load_corpus,
    split_of,
)
from emolens.stimuli.mixed import load_mixed_records, load_mixed_texts, mixed_texts_path
from emolens.stimuli.speakers import Dialogue, DialogueSet, dialogues_from_records, load_dialogues
from emolens.stimuli.text import ForbiddenMatcher, NearDuplicateIndex, shingles, word_count

__all__ = [
    "AffectRatings",
    "Corpus",
    "Dialogue",
    "DialogueSet",
    "ForbiddenMatcher",
    "GenerationSummary",
    "NearDuplicateIndex",
    "Record",
    "available_corpora",
    "dialogues_from_records",
    "generate_stories",
    "load_affect_ratings",
    "load_corpus",
    "load_dialogues",
    "load_mixed_records",
    "load_mixed_texts",
    "mixed_texts_path",
    "shingles",
    "split_of",
    "word_count",
]


def __getattr__(name: str) -> Any:
    # the generator imports torch; load it on first use only
    if name in ("generate_stories", "GenerationSummary"):
        from emolens.stimuli import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'emolens.stimuli' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from emolens.stimuli.generate import GenerationSummary, generate_stories
