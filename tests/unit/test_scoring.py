"""The one scoring rule, and that every stage that scores uses it."""
from __future__ import annotations

import pytest
import torch

from emolens.errors import InputError
from emolens.scoring import CLASSIFY_RULE, project, score


def test_score_is_centred_projection_and_cosine():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g)
    d = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    c = torch.randn(8, generator=g)
    expect = torch.einsum("bpd,ed->bpe", x - c, d)
    assert torch.allclose(score(x, d, c), expect, atol=1e-6)
    raw = score(x, d)
    assert torch.allclose(raw, torch.einsum("bpd,ed->bpe", x, d), atol=1e-6)
    # centring shifts each emotion's score by the same constant everywhere
    shift = raw - score(x, d, c)
    assert torch.allclose(shift, (c @ d.T).expand_as(shift), atol=1e-5)
    cos = score(x, d, c, kind="cosine")
    assert torch.allclose(cos, expect / (x - c).norm(dim=-1, keepdim=True), atol=1e-6)
    assert cos.abs().max() <= 1 + 1e-6
    with pytest.raises(InputError, match="kind"):
        score(x, d, kind="dot")


def test_readout_evaluation_and_validation_share_the_rule(tiny):
    from emolens import evaluate, extract_emotions, read_emotions

    texts = {"a": ["the cat sat on the mat today", "a dog ran in the park at noon"],
             "b": ["numbers one two three four five", "red green blue and yellow paint"]}
    reg = extract_emotions(tiny, texts, layers=[1, 2], progress=False, neutral=[])
    ro = read_emotions(tiny, reg, texts["a"] + texts["b"], layer=2)
    from emolens.sites import resolve_site

    name = resolve_site(tiny, 2).name
    _, cache = tiny.run_with_cache(ro_tokens := tiny.to_tokens(texts["a"][:1]),
                                   names_filter=[name])
    direct = project(cache[name][0], reg, 2)
    n = ro_tokens.shape[1]
    assert torch.allclose(ro.scores[0, :n], direct, atol=1e-4)
    ev = evaluate(tiny, reg, texts["a"] + texts["b"], ["a", "a", "b", "b"], progress=False)
    # evaluation classifies each text by the rule on its mean activation; the readout scores
    # each token by the same rule, so (linearity) the argmax of the pooled readout must agree
    li = ev.layers.index(2)
    assert torch.equal(ev.predictions[li], ro.pooled(2).argmax(-1))
    assert ev.to_dict()["rule"] == CLASSIFY_RULE
