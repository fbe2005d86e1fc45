"""Readouts: exact scores, one pass for many layers, pooling rules, padding, errors."""
from __future__ import annotations

import pytest
import torch

import emolens
from emolens.errors import InputError, ModelMismatchError
from emolens.readout import read_emotions
from emolens.registry import EmotionRegistry
from emolens.sites import Site

TEXTS = ["the storm broke the old fence", "hi", [{"role": "user", "content": "my dog is lost"}]]


@pytest.fixture(scope="module")
def reg(tiny):
    g = torch.Generator().manual_seed(3)
    sites = [Site(i, f"blocks.{i}.hook_resid_post") for i in range(4)]
    return EmotionRegistry(torch.randn(4, 3, 64, generator=g), ["calm", "afraid", "sad"], sites,
                           torch.ones(4), center=torch.randn(4, 64, generator=g),
                           metadata={"model": emolens.model_provenance(tiny).to_dict()},
                           default_layer=2)


def _reference(model, reg, text, layer, centered=True):
    from emolens.tokens import to_inputs

    b = to_inputs(model, [text])
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(b.tokens, names_filter=name)
    x = cache[name][0]
    if centered:
        x = x - reg.center(layer)
    return x @ reg.matrix(layer).T


@pytest.mark.parametrize("side", ["right", "left"])
def test_scores_equal_direct_projection_for_every_text(tiny, reg, side):
    ro = read_emotions(tiny, reg, TEXTS, layers=[1, 3], batch_size=2, padding_side=side)
    assert ro.scores_all.shape[2:] == (2, 3) and ro.layers == [1, 3]
    assert torch.equal(ro.scores, ro.at(ro.default_layer))  # one shape: [batch, pos, emotion]
    for i, text in enumerate(TEXTS):
        real = ro.mask[i]
        for j, layer in enumerate((1, 3)):
            ref = _reference(tiny, reg, text, layer)
            assert torch.allclose(ro.scores_all[i, real, j], ref, atol=1e-4)
        assert (ro.scores_all[i, ~real] == 0).all()


def test_single_layer_default_and_raw_projection(tiny, reg):
    ro = read_emotions(tiny, reg, TEXTS[:1])
    assert ro.scores.shape == (1, ro.mask.shape[1], 3) and ro.layers == [2]
    raw = read_emotions(tiny, reg, TEXTS[:1], centered=False)
    assert torch.allclose(raw.scores[0], _reference(tiny, reg, TEXTS[0], 2, centered=False), atol=1e-4)
    diff = raw.scores[0] - ro.scores[0]  # a constant per emotion: center . v
    assert torch.allclose(diff, (reg.center(2) @ reg.matrix(2).T).expand_as(diff), atol=1e-4)


def test_pooled_excludes_sink_and_padding(tiny, reg):
    ro = read_emotions(tiny, reg, TEXTS, padding_side="left")
    for i in range(len(TEXTS)):
        m = ro.content_mask[i]
        assert torch.allclose(ro.pooled()[i], ro.scores[i][m].mean(0), atol=1e-6)
        assert not m[ro.mask[i].int().argmax()]  # the first real token is not content
    with_sink = ro.pooled(include_sink=True)
    assert not torch.allclose(with_sink, ro.pooled())


def test_reply_position_and_tidy_frame(tiny, reg):
    ro = read_emotions(tiny, reg, [TEXTS[2]])
    r = int(ro.reply_pos[0])
    assert torch.equal(ro.at_reply()[0], ro.scores[0, r])
    assert ro.str_tokens[0][r] == "\n" and "".join(ro.str_tokens[0][r - 9:r]) == "assistant"
    df = ro.to_dataframe()
    assert len(df) == int(ro.mask.sum()) * 3
    assert set(df.columns) == {"text", "pos", "token", "layer", "emotion", "score", "is_content"}
    with pytest.raises(InputError, match="chat input"):
        read_emotions(tiny, reg, ["plain"]).at_reply()


def test_errors(tiny, reg):
    with pytest.raises(InputError, match="empty"):
        read_emotions(tiny, reg, [])
    with pytest.raises(InputError, match="tokens long"):
        read_emotions(tiny, reg, ["x" * 1000])
    with pytest.raises(InputError, match="either layer"):
        read_emotions(tiny, reg, ["a"], layer=1, layers=[1])
    other = EmotionRegistry(reg.tensor(), reg.emotions, reg.sites, reg.mean_norms,
                            metadata={"model": {"model_id": "someone-else", "n_layers": 4}})
    with pytest.raises(ModelMismatchError, match="someone-else"):
        read_emotions(tiny, other, ["a b"])
    with pytest.raises(InputError, match="did you mean 'calm'"):
        read_emotions(tiny, reg, ["a b"]).emotion("clam")
