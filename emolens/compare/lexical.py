"""Lexical baselines: emotion geometry from representations that know only the words.

``tfidf_bank(corpus, bank)`` turns every story of a ``StoryBank`` into a TF-IDF vector
(lower-cased word unigrams; vocabulary and inverse document frequencies from the *training*
stories only, words in at least ``min_df`` of them; ``tf = count / words``,
``idf = ln((1 + N) / (1 + df)) + 1``; rows L2-normalised) and returns a ``StoryBank`` of one
site, ``lexical.tfidf``, with the same records, so every control that runs on a model's bank
runs on it unchanged (directions by the same recipe, without neutral denoising: there is no
neutral text in a bag of words). The model's own lexical baseline, its token embeddings
averaged over the same content tokens, is site 0 of every model bank
(``emolens.compare.bank``).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import torch

from emolens.errors import InputError
from emolens.sites import Site

TFIDF_SITE = Site(-1, "lexical.tfidf")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, with an inner apostrophe kept: "didn't")."""
    return _WORD.findall(text.lower())


def tfidf_bank(corpus: Any, bank: Any, *, min_df: int = 2) -> Any:
    """A ``StoryBank`` of TF-IDF vectors for the stories of ``bank`` (see the module
    docstring); ``corpus`` supplies their texts by id."""
    from emolens.compare.bank import StoryBank

    if min_df < 1:
        raise InputError(f"min_df must be >= 1, got {min_df!r}")
    by_id = {r.id: r.text for r in corpus.stories()}
    missing = [r["id"] for r in bank.records if r["id"] not in by_id]
    if missing:
        raise InputError(f"{len(missing)} bank stories are not in this corpus (first: "
                         f"{missing[0]!r}); pass the corpus the bank was built from")
    docs = [Counter(words(by_id[r["id"]])) for r in bank.records]
    train = [d for d, r in zip(docs, bank.records) if r["split"] == "train"]
    if not train:
        raise InputError("the bank has no training stories to fit a vocabulary on")
    df: Counter[str] = Counter()
    for d in train:
        df.update(d.keys())
    vocab = sorted(w for w, n in df.items() if n >= min_df)
    if not vocab:
        raise InputError(f"no word occurs in {min_df} training stories; lower min_df")
    index = {w: i for i, w in enumerate(vocab)}
    n_train = len(train)
    idf = torch.tensor([math.log((1 + n_train) / (1 + df[w])) + 1.0 for w in vocab],
                       dtype=torch.float64)
    x = torch.zeros(len(docs), len(vocab), dtype=torch.float64)
    n_words = torch.zeros(len(docs), dtype=torch.float64)
    for i, d in enumerate(docs):
        total = sum(d.values())
        n_words[i] = total
        for w, c in d.items():
            j = index.get(w)
            if j is not None:
                x[i, j] = c / total
    x = x * idf
    norms = x.norm(dim=-1, keepdim=True)
    keep = norms[:, 0] > 0
    x = x / norms.clamp(min=1e-12)
    return StoryBank(model={"model_id": "lexical.tfidf"}, n_layers=0, sites=[TFIDF_SITE],
                     emotions=list(bank.emotions), records=[dict(r) for r in bank.records],
                     means=x.float()[:, None, :], keep=keep & bank.keep,
                     norm_sum=torch.zeros(len(docs), 1, dtype=torch.float64), n_tokens=n_words,
                     neutral_total=None, neutral_outer=None, neutral_count=None,
                     info={"corpus": bank.info.get("corpus"), "vocabulary": len(vocab),
                           "min_df": min_df, "fitted_on": "train split",
                           "weighting": "tf = count / words; idf = ln((1 + N) / (1 + df)) + 1; "
                                        "L2-normalised"})
