"""extract_emotions's label-permutation options: ``label_permutation_seed`` (the registry itself
is a null control); the removed name ``shuffle_labels`` is refused with the new one."""
from __future__ import annotations

import pytest
import torch

from emolens.errors import ExtractionError
from emolens.extraction import extract_emotions

TEXTS = {
    "sunny": ["the sun is warm and bright today", "we laughed in the sunny park",
              "bright light on a summer day", "a warm breeze and clear sky"],
    "stormy": ["thunder cracked over the dark sea", "the storm tore the roof away",
               "cold rain hammered the windows", "lightning split the old oak"],
}


def _fit(model, **kw):
    return extract_emotions(model, TEXTS, layers=[1], progress=False, neutral=[], **kw)


def test_permutation_seed_permutes(tiny):
    real = _fit(tiny)
    permuted = _fit(tiny, label_permutation_seed=3)
    assert permuted.metadata["shuffled_labels_seed"] == 3
    assert real.metadata["shuffled_labels_seed"] is None
    assert not torch.allclose(real.matrix(1), permuted.matrix(1))
    again = _fit(tiny, label_permutation_seed=3)
    assert torch.equal(again.matrix(1), permuted.matrix(1))  # the seed fixes the permutation


def test_the_removed_name_is_refused_with_the_new_one(tiny):
    with pytest.raises(ExtractionError, match=r"shuffle_labels=3 was removed.*label_permutation_seed="):
        _fit(tiny, shuffle_labels=3)
