"""``emolens.generate`` on tiny models: tokens, chat input, seeds, batches, steering, monitor."""
from __future__ import annotations

import pytest
import torch

import emolens
from emolens.errors import InputError, SteeringError
from emolens.generation import Generation, generate
from emolens.registry import EmotionRegistry
from emolens.sites import Site
from emolens.steering import Steering, steer
from emolens.tokens import to_inputs


def make_registry(model, *, seed: int = 0) -> EmotionRegistry:
    n_layers, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    dirs = torch.randn(n_layers, 3, d, generator=torch.Generator().manual_seed(seed))
    return EmotionRegistry(dirs, ["calm", "desperate", "happy"],
                           [Site(i, f"blocks.{i}.hook_resid_post") for i in range(n_layers)],
                           torch.arange(n_layers) + 2.0,
                           metadata={"model": emolens.model_provenance(model).to_dict()})


def test_greedy_matches_model_generate(tiny_llama):
    g = generate(tiny_llama, "hello there", max_new_tokens=8, stop_at_eos=False)
    toks = tiny_llama.to_tokens("hello there")
    ref = tiny_llama.generate(toks, max_new_tokens=8, do_sample=False, verbose=False,
                              stop_at_eos=False)
    assert isinstance(g, Generation) and g.tokens.tolist() == ref.tolist()
    assert g.prompt_len == toks.shape[1] and g.generated_tokens.shape == (1, 8)
    assert g.text == tiny_llama.tokenizer.decode(ref[0, toks.shape[1]:], skip_special_tokens=True)
    assert g.attention_mask.shape == g.tokens.shape and bool(g.attention_mask.all())
    assert str(g) == g.text and len(g) == 1


def test_chat_messages_go_through_the_template(tiny):
    msgs = [{"role": "user", "content": "hi"}]
    g = generate(tiny, msgs, max_new_tokens=3, stop_at_eos=False)
    assert g.prompts[0] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert g.tokens[0, : g.prompt_len].tolist() == to_inputs(tiny, [msgs]).tokens[0].tolist()


def test_text_stops_at_the_stop_token_and_mask_follows(tiny_llama):
    eos = tiny_llama.tokenizer.eos_token_id
    toward_eos = tiny_llama.W_U[:, eos].detach()
    prompt_len = tiny_llama.to_tokens("abc").shape[1]
    at = torch.zeros(1, prompt_len + 10, dtype=torch.bool)
    at[0, prompt_len + 1] = True  # the column whose logits choose the third generated token
    s = Steering(toward_eos, 1000.0, layer=2, positions=at, scale=1.0)
    g = generate(tiny_llama, "abc", max_new_tokens=6, steering=s, stop_at_eos=True)
    row = g.generated_tokens[0].tolist()
    assert row[2] == eos and eos not in row[:2]
    assert g.text == tiny_llama.tokenizer.decode(row[:2], skip_special_tokens=True)
    assert g.attention_mask[0].tolist() == [1] * (prompt_len + 3) + [0] * (len(row) - 3)
    free = generate(tiny_llama, "abc", max_new_tokens=6, steering=s, stop_at_eos=False)
    assert free.generated_tokens.shape[1] == 6 and bool(free.attention_mask.all())


def test_seed_makes_sampling_repeatable_and_leaves_global_rng_alone(tiny):
    state = torch.random.get_rng_state()
    a = generate(tiny, "seeded", max_new_tokens=10, do_sample=True, seed=7, stop_at_eos=False)
    assert torch.equal(state, torch.random.get_rng_state())
    b = generate(tiny, "seeded", max_new_tokens=10, do_sample=True, seed=7, stop_at_eos=False)
    c = generate(tiny, "seeded", max_new_tokens=10, do_sample=True, seed=8, stop_at_eos=False)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert a.tokens.tolist() != c.tokens.tolist()
    d = generate(tiny, "seeded", max_new_tokens=10, do_sample=True, seed=7, top_p=0.9,
                 temperature=0.7, stop_at_eos=False)
    assert d.settings["top_p"] == 0.9


def test_batch_rows_match_single_prompts(tiny_llama):
    prompts = ["hi", "a longer prompt here"]
    g = generate(tiny_llama, prompts, max_new_tokens=6, stop_at_eos=False)
    assert len(g.texts) == 2 and g.tokens.shape[0] == 2
    for i, p in enumerate(prompts):
        assert g.texts[i] == generate(tiny_llama, p, max_new_tokens=6, stop_at_eos=False).text


def test_a_left_padded_tokenized_batch_is_used_as_given(tiny_llama):
    prompts = ["hi", "a longer prompt here"]
    b = to_inputs(tiny_llama, prompts, padding_side="left")
    g = generate(tiny_llama, b, max_new_tokens=5, stop_at_eos=False)
    ref = generate(tiny_llama, prompts, max_new_tokens=5, stop_at_eos=False)
    assert g.tokens.tolist() == ref.tokens.tolist() and g.prompts == ref.prompts
    with pytest.raises(InputError, match="left-padded TokenizedBatch"):
        generate(tiny_llama, to_inputs(tiny_llama, prompts), max_new_tokens=2)


def test_steering_is_applied_and_removed(tiny_llama):
    reg = make_registry(tiny_llama, seed=3)
    s = Steering(reg, {"calm": 4.0}, layers=[0, 1], positions="generated")
    n_hooks = sum(len(hp.fwd_hooks) for hp in tiny_llama.hook_dict.values())
    outs = [generate(tiny_llama, "hello", max_new_tokens=8, steering=[s], stop_at_eos=False,
                     use_past_kv_cache=c) for c in (False, True)]
    assert outs[0].tokens.tolist() == outs[1].tokens.tolist()
    with steer(tiny_llama, s):
        ref = tiny_llama.generate(tiny_llama.to_tokens("hello"), max_new_tokens=8,
                                  do_sample=False, verbose=False, stop_at_eos=False)
    assert outs[1].tokens.tolist() == ref.tolist()
    assert sum(len(hp.fwd_hooks) for hp in tiny_llama.hook_dict.values()) == n_hooks
    assert outs[0].steering[0]["positions"] == "generated"
    assert len(tiny_llama.original_model._forward_pre_hooks) == 0


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(max_new_tokens=0), InputError, "max_new_tokens=0"),
    (dict(do_sample=True, temperature=0.0), InputError, "temperature=0.0"),
    (dict(top_p=1.5), InputError, "top_p=1.5"),
    (dict(steering="calm"), SteeringError, "Steering"),
    (dict(steering=[1]), SteeringError, "got a int"),
    (dict(monitor="calm"), InputError, "monitor must be an EmotionRegistry"),
])
def test_bad_arguments(tiny, kwargs, err, match):
    with pytest.raises(err, match=match):
        generate(tiny, "x", **kwargs)


# ---------------------------------------------------------------- monitor (readout)
def test_monitor_gives_projections_of_every_token(tiny_llama):
    pytest.importorskip("emolens.readout.readout")
    reg = make_registry(tiny_llama, seed=6)
    g = generate(tiny_llama, ["hello", "hi there friend"], max_new_tokens=5, monitor=reg,
                 stop_at_eos=False)
    ro = g.readout
    b, pos = g.tokens.shape
    assert tuple(ro.scores_all.shape) == (b, pos, len(reg.layers), len(reg.emotions))
    _, cache = tiny_llama.run_with_cache(g.tokens, attention_mask=g.attention_mask)
    m = g.attention_mask.bool()
    for li, layer in enumerate(reg.layers):
        want = cache[f"blocks.{layer}.hook_resid_post"] @ reg.matrix(layer).T
        torch.testing.assert_close(ro.scores_all[:, :, li][m], want[m], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ro.at(layer), ro.scores_all[:, :, li])
    assert ro.reply_pos.tolist() == [g.prompt_len - 1] * 2
    first = m.long().argmax(-1)
    assert torch.equal(ro.mask, m) and not ro.content_mask[torch.arange(b), first].any()
    assert int(ro.content_mask.sum()) == int(m.sum()) - b
    assert [len(t) for t in ro.str_tokens] == m.sum(-1).tolist()
    assert ro.texts[1].endswith(g.texts[1])
    df = ro.to_dataframe(layers=[reg.default_layer])
    assert len(df) == int(m.sum()) * len(reg.emotions)


def test_monitor_sees_the_steered_residual_at_the_right_positions(tiny_llama):
    pytest.importorskip("emolens.readout.readout")
    reg = make_registry(tiny_llama, seed=6)
    layer = reg.layers[0]
    plain = generate(tiny_llama, "hello", max_new_tokens=4, monitor=reg, stop_at_eos=False)
    s = Steering(reg, {"calm": 0.5}, layer=layer, positions="generated")
    steered = generate(tiny_llama, "hello", max_new_tokens=4, monitor=reg, steering=s,
                       stop_at_eos=False)
    e = reg.emotions.index("calm")
    p = plain.prompt_len
    diff = steered.readout.scores_all[0, :, 0, e] - plain.readout.scores_all[0, :, 0, e]
    # prompt positions are untouched; the first generated position is raised by 0.5 * mean_norm
    torch.testing.assert_close(diff[:p], torch.zeros(p), atol=1e-5, rtol=0)
    assert abs(float(diff[p]) - 0.5 * reg.mean_norm(layer)) < 1e-4
