"""Hidden-emotion check: sentence mapping, baseline z-scores and the flag rule."""
from __future__ import annotations

import pytest
import torch

import emolens
from emolens.errors import InputError
from emolens.readout import NeutralBaseline, hidden_emotion_check, neutral_baseline
from emolens.registry import EmotionRegistry
from emolens.sites import Site


@pytest.fixture(scope="module")
def reg(tiny):
    g = torch.Generator().manual_seed(5)
    return EmotionRegistry(torch.randn(4, 2, 64, generator=g), ["calm", "afraid"],
                           [Site(i, f"blocks.{i}.hook_resid_post") for i in range(4)],
                           torch.ones(4), metadata={"model": emolens.model_provenance(tiny).to_dict()},
                           default_layer=2)


def test_flags_only_sentences_without_the_emotions_words(tiny, reg):
    # a baseline far below every reading: every sentence reads as strongly "calm" and "afraid"
    base = NeutralBaseline(2, torch.full((2,), -1e4), torch.ones(2), 10)
    reply = "The meeting is at noon. Stay calm and breathe. The report is due."
    df = hidden_emotion_check(tiny, reg, reply, baseline=base,
                              lexicon={"calm": ["calm", "calmly"], "afraid": ["afraid"]},
                              valence_threshold=2.0)
    calm = df[df.emotion == "calm"].set_index("sentence")
    assert list(calm.index) == ["The meeting is at noon.", "Stay calm and breathe.",
                                "The report is due."]
    assert calm.loc["Stay calm and breathe.", "lexicon_hits"] == "calm"
    assert calm["flagged"].tolist() == [True, False, True]
    assert df[df.emotion == "afraid"]["flagged"].all()
    assert (df.internal_z > 1000).all()


def test_z_scores_use_the_baseline_and_threshold(tiny, reg):
    base = neutral_baseline(tiny, reg, [[{"role": "user", "content": "What is 2+2?"},
                                         {"role": "assistant", "content": "It is 4."}]])
    assert base.layer == 2 and base.n_tokens == len("It is 4.<|im_end|>\n") - len("<|im_end|>") + 1
    high = NeutralBaseline(2, base.mean, base.std, base.n_tokens)
    df = hidden_emotion_check(tiny, reg, "It is 4.", baseline=high, lexicon={},
                              z_threshold=1e9)
    assert not df["flagged"].any()
    with pytest.raises(InputError, match="empty"):
        hidden_emotion_check(tiny, reg, "  ", baseline=high, lexicon={})
