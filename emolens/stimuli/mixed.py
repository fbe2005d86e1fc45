"""The bundled mixed text collection: everyday prose, instructions, code, news-like text, emails,
reviews, lists, forum posts and facts (572 texts, composed from hand-written templates by
``data/mixed/make_mixed.py``, seed 0). Not emotion stories: text to scan directions on
(``emolens.top_examples``) and to read them on text they were not built from.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emolens.errors import CorpusError, unknown_name_message

MIXED_PATH = Path(__file__).parent / "data" / "mixed" / "mixed.jsonl"
GENRES = ("prose", "instructions", "code", "news", "email", "review", "list", "forum", "facts")


def mixed_texts_path() -> Path:
    """Path of ``mixed.jsonl`` (objects with ``id``, ``genre``, ``text``)."""
    return MIXED_PATH


def load_mixed_records(genres: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The collection's records (``id``, ``genre``, ``text``), optionally only some genres."""
    from emolens.io import read_jsonl

    if genres is not None:
        for g in genres:
            if g not in GENRES:
                raise CorpusError(unknown_name_message("genre", g, GENRES))
    out = []
    for where, obj in read_jsonl(MIXED_PATH, error=CorpusError, strict=True):
        if not (isinstance(obj, dict) and isinstance(obj.get("text"), str)
                and obj.get("genre") in GENRES):
            raise CorpusError(f"{where}: expected an object with 'id', a known 'genre' and "
                              "a string 'text'")
        if genres is None or obj["genre"] in genres:
            out.append(obj)
    return out


def load_mixed_texts(genres: Sequence[str] | None = None) -> list[str]:
    """The collection's texts, in file order (optionally only ``genres``)."""
    return [r["text"] for r in load_mixed_records(genres)]
