"""Text helpers shared by the corpus loader, the story generator and the tests.

- ``words`` / ``word_count``: the corpus's notion of a word (letters, with inner ``'`` or ``-``);
- ``ForbiddenMatcher``: whole-word, case-insensitive matching of words and multi-word phrases;
- ``shingles`` / ``overlap`` / ``NearDuplicateIndex``: near-duplicate detection by word 5-gram
  ("shingle") overlap, ``|A & B| / min(|A|, |B|)``.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

WORD = re.compile(r"[a-z]+(?:['\-][a-z]+)*")
SHINGLE_SIZE = 5
NEAR_DUPLICATE_OVERLAP = 0.2


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (runs of letters, keeping inner apostrophes and hyphens)."""
    return WORD.findall(text.lower())


def word_count(text: str) -> int:
    """Number of words in ``text`` as the corpus counts them (see ``words``)."""
    return len(words(text))


def shingles(text: str, n: int = SHINGLE_SIZE) -> frozenset[tuple[str, ...]]:
    """The set of word ``n``-grams of ``text`` (empty when it has fewer than ``n`` words)."""
    w = words(text)
    return frozenset(tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def overlap(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    """Shared shingles over the smaller set's size (0 when either set is empty)."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


class ForbiddenMatcher:
    """Finds any of a list of words or phrases as whole words, case-insensitively.

    A phrase matches with any run of whitespace between its words. "Whole word" means the match
    is not preceded or followed by a letter, digit or underscore, so ``fear`` matches ``fear,``,
    ``Fear's`` and ``fear-stricken`` but not ``fearless``.
    """

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms: tuple[str, ...] = tuple(dict.fromkeys(t.strip() for t in terms if t.strip()))
        parts = [r"\s+".join(re.escape(p) for p in t.split()) for t in self.terms]
        # longest first so the reported match is the most specific term
        parts.sort(key=len, reverse=True)
        self._pattern = (re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)
                         if parts else None)

    def find(self, text: str) -> str | None:
        """The first forbidden term found in ``text`` (as written there), or None."""
        if self._pattern is None:
            return None
        m = self._pattern.search(text)
        return m.group(0) if m else None

    def __repr__(self) -> str:
        return f"ForbiddenMatcher({list(self.terms)!r})"


@dataclass(frozen=True)
class NearDuplicate:
    """A text found to overlap an indexed one: the indexed key and the overlap fraction."""

    key: str
    overlap: float


class NearDuplicateIndex:
    """An inverted index of shingles for finding near-duplicates among many texts quickly."""

    def __init__(self, n: int = SHINGLE_SIZE, threshold: float = NEAR_DUPLICATE_OVERLAP) -> None:
        self.n = n
        self.threshold = threshold
        self._sizes: dict[str, int] = {}
        self._exact: dict[str, str] = {}
        self._postings: dict[tuple[str, ...], list[str]] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def find(self, text: str) -> NearDuplicate | None:
        """The most-overlapping indexed text if its overlap exceeds the threshold, else None.

        Texts with the same words (ignoring case and punctuation) always count as duplicates.
        """
        norm = " ".join(words(text))
        if norm and norm in self._exact:
            return NearDuplicate(self._exact[norm], 1.0)
        sh = shingles(text, self.n)
        if not sh:
            return None
        shared: Counter[str] = Counter()
        for s in sh:
            for key in self._postings.get(s, ()):
                shared[key] += 1
        best: NearDuplicate | None = None
        for key, k in shared.items():
            denom = min(len(sh), self._sizes[key])
            frac = k / denom if denom else 0.0
            if frac > self.threshold and (best is None or frac > best.overlap):
                best = NearDuplicate(key, frac)
        return best

    def add(self, key: str, text: str) -> None:
        """Index ``text`` under ``key``."""
        sh = shingles(text, self.n)
        self._sizes[key] = len(sh)
        norm = " ".join(words(text))
        if norm:
            self._exact.setdefault(norm, key)
        for s in sh:
            self._postings.setdefault(s, []).append(key)
