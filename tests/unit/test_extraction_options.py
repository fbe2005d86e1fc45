"""extract_emotions's label-permutation options: ``label_permutation_seed`` (the registry itself
is a null control); the removed name ``shuffle_labels`` is refused with the new one."""
from __future__ import annotations

import pytest
import torch

from emolens.errors import ExtractionError, InputError
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


# ------------------------------------------------------------------ permutation groups
def test_permuted_labels_move_whole_groups():
    from emolens.extraction.extract import permuted_labels

    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
    groups = [0, 0, 1, 2, 2, 3, 3, 4, 4, 5]  # six sources, 1-2 texts each
    # no groups: the old per-text permutation, bit for bit
    g = torch.Generator().manual_seed(4)
    assert torch.equal(permuted_labels(labels, 4),
                       torch.tensor(labels)[torch.randperm(len(labels), generator=g)])
    seen = set()
    for seed in range(20):
        p = permuted_labels(labels, seed, groups).tolist()
        for grp in set(groups):  # a group's texts keep one label
            assert len({p[i] for i in range(len(p)) if groups[i] == grp}) == 1
        # the multiset of group labels is the original one (groups are permuted, not texts)
        per_group = sorted(p[groups.index(grp)] for grp in sorted(set(groups)))
        assert per_group == sorted(labels[groups.index(grp)] for grp in sorted(set(groups)))
        seen.add(tuple(p))
    assert len(seen) > 5  # and the seeds do permute


def test_grouped_control_equals_the_grouped_seed_and_groups_are_checked(tiny):
    # two texts per source; the in-pass control k equals label_permutation_seed=k, grouped
    a = ["sun warm bright day", "sun warm bright noon", "sun glow warm", "warm sun light",
         "bright warm sun", "sunny warm hour"]
    b = ["storm dark cold rain", "storm cold hail", "dark storm wind", "cold rain storm",
         "storm thunder dark", "hail cold storm"]
    texts = {"sunny": a, "stormy": b}
    groups = {"sunny": [0, 0, 1, 1, 2, 2], "stormy": [3, 3, 4, 4, 5, 5]}
    kw = dict(layers=[1], progress=False, neutral=[], validate=False, default_layer=1,
              permutation_groups=groups)
    out: list = []
    real = extract_emotions(tiny, texts, shuffled_control=3, shuffled_out=out, **kw)
    assert real.metadata["permutation_groups"] == 6
    alone = extract_emotions(tiny, texts, label_permutation_seed=2, **kw)
    torch.testing.assert_close(out[2].matrix(1), alone.matrix(1), atol=1e-5, rtol=1e-5)
    assert alone.metadata["permutation_groups"] == 6
    ungrouped = extract_emotions(tiny, texts, label_permutation_seed=2, layers=[1],
                                 progress=False, neutral=[], validate=False)
    assert ungrouped.metadata["permutation_groups"] is None
    with pytest.raises(InputError, match="two emotions"):
        extract_emotions(tiny, texts, layers=[1], progress=False, neutral=[], validate=False,
                         permutation_groups={"sunny": [0] * 6, "stormy": [0] * 6})
    with pytest.raises(InputError, match=r"permutation_groups\['stormy'\]"):
        extract_emotions(tiny, texts, layers=[1], progress=False, neutral=[], validate=False,
                         permutation_groups={"sunny": [0] * 6, "stormy": [1, 2]})


def test_permutation_groups_with_texts_given_as_iterators(tiny):
    # texts given as iterators are read once (the counts come from the texts taken)
    a = ["sun warm bright day", "sun warm noon", "sun glow warm", "warm sun light"]
    b = ["storm dark cold", "storm cold hail", "dark storm wind", "cold rain storm"]
    kw = dict(layers=[1], progress=False, neutral=[], validate=False, label_permutation_seed=1)
    lists = extract_emotions(tiny, {"s": a, "t": b},
                             permutation_groups={"s": [0, 0, 1, 1], "t": [2, 2, 3, 3]}, **kw)
    iters = extract_emotions(tiny, {"s": iter(a), "t": iter(b)},
                             permutation_groups={"s": [0, 0, 1, 1], "t": [2, 2, 3, 3]}, **kw)
    assert iters.metadata["permutation_groups"] == lists.metadata["permutation_groups"] == 4
    torch.testing.assert_close(iters.matrix(1), lists.matrix(1))
