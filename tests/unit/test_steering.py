"""Steering on tiny random models: exact arithmetic, positions at every decode step with and
without the KV cache, hook hygiene, errors, control vectors and the causal word test."""
from __future__ import annotations

import json
import math

import pytest
import torch

import emolens
from emolens.errors import ModelMismatchError, SteeringError
from emolens.registry import EmotionRegistry
from emolens.sites import Site
from emolens.steering import Steering, measure_mean_norm, random_direction, steer
from emolens.tokens import to_inputs

EMOTIONS = ["calm", "desperate", "happy"]


def make_registry(model, *, seed: int = 0, layers=None) -> EmotionRegistry:
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else layers
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(len(layers), len(EMOTIONS), int(model.cfg.d_model), generator=g)
    norms = torch.tensor([2.0 + i for i in range(len(layers))])
    return EmotionRegistry(dirs, EMOTIONS, [Site(lay, f"blocks.{lay}.hook_resid_post") for lay in layers],
                           norms, metadata={"model": emolens.model_provenance(model).to_dict()})


@pytest.fixture(scope="module")
def reg(tiny):
    return make_registry(tiny)


@pytest.fixture(scope="module")
def reg_llama(tiny_llama):
    return make_registry(tiny_llama, seed=1)


def resid(model, toks, layer, **kw):
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(toks, names_filter=[name], **kw)
    return cache[name]


def hook_counts(model):
    inner = model.original_model
    return ([len(hp.fwd_hooks) for hp in model.hook_dict.values()],
            len(inner._forward_pre_hooks), len(inner._forward_hooks))


# ---------------------------------------------------------------- exact arithmetic
def test_add_is_exact_at_the_site_and_nothing_upstream_changes(tiny, reg):
    toks = tiny.to_tokens("the quick brown fox")
    layer = reg.default_layer
    base = resid(tiny, toks, layer)
    below = resid(tiny, toks, layer - 1)
    with steer(tiny, reg, {"calm": 0.3}):
        got = resid(tiny, toks, layer)
        got_below = resid(tiny, toks, layer - 1)
    want = base + 0.3 * reg.mean_norm(layer) * reg.vector("calm", layer)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.equal(got_below, below)


def test_several_emotions_add_up(tiny, reg):
    toks = tiny.to_tokens("several at once")
    base = resid(tiny, toks, 1)
    with steer(tiny, reg, {"calm": 0.5, "desperate": -0.25}, layer=1):
        got = resid(tiny, toks, 1)
    mn = reg.mean_norm(1)
    want = base + 0.5 * mn * reg.vector("calm", 1) - 0.25 * mn * reg.vector("desperate", 1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_several_layers_each_use_their_own_direction_and_norm(tiny, reg):
    toks = tiny.to_tokens("layers")
    base0 = resid(tiny, toks, 0)
    with steer(tiny, reg, {"happy": 0.2}, layers=[0, 2]) as h:
        got0 = resid(tiny, toks, 0)
        assert sorted(e.layer for e in h.edits) == [0, 2]
    torch.testing.assert_close(got0, base0 + 0.2 * reg.mean_norm(0) * reg.vector("happy", 0),
                               atol=1e-6, rtol=0)


def test_ablation_leaves_zero_projection_and_keeps_the_rest(tiny, reg):
    toks = tiny.to_tokens("ablate this direction please")
    layer = 2
    base = resid(tiny, toks, layer)
    r = reg.vector("calm", layer)
    with steer(tiny, reg, "calm", op="ablate", layer=layer):
        got = resid(tiny, toks, layer)
    assert float((got @ r).abs().max()) < 1e-5
    torch.testing.assert_close(got + (base @ r)[..., None] * r, base, atol=1e-5, rtol=0)


def test_ablation_at_every_layer_and_of_several_directions(tiny, reg):
    toks = tiny.to_tokens("every layer")
    with steer(tiny, reg, ["calm", "happy"], op="ablate", layers="all"):
        _, cache = tiny.run_with_cache(toks)
    for layer in reg.layers:
        x = cache[f"blocks.{layer}.hook_resid_post"]
        for e in ("calm", "happy"):
            assert float((x @ reg.vector(e, layer)).abs().max()) < 1e-5


def test_direction_layer_ablates_one_direction_everywhere(tiny, reg):
    toks = tiny.to_tokens("one direction")
    r = reg.vector("calm", 3)
    with steer(tiny, reg, "calm", op="ablate", layers="all", direction_layer=3):
        _, cache = tiny.run_with_cache(toks)
    for layer in reg.layers:
        assert float((cache[f"blocks.{layer}.hook_resid_post"] @ r).abs().max()) < 1e-5


def test_clamp_sets_the_projection_exactly_even_for_correlated_directions(tiny, reg):
    toks = tiny.to_tokens("clamp me")
    layer = 1
    mn = reg.mean_norm(layer)
    base = resid(tiny, toks, layer)
    with steer(tiny, reg, {"calm": 0.7, "desperate": -0.2}, op="clamp", layer=layer):
        got = resid(tiny, toks, layer)
    torch.testing.assert_close(got @ reg.vector("calm", layer), torch.full(got.shape[:2], 0.7 * mn),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(got @ reg.vector("desperate", layer),
                               torch.full(got.shape[:2], -0.2 * mn), atol=1e-4, rtol=0)
    # the change lies in the span of the two directions
    span = torch.stack([reg.vector("calm", layer), reg.vector("desperate", layer)])
    q, _ = torch.linalg.qr(span.T)
    diff = got - base
    torch.testing.assert_close(diff - (diff @ q) @ q.T, torch.zeros_like(diff), atol=1e-4, rtol=0)


def test_ablate_add_projects_out_then_adds(tiny, reg):
    toks = tiny.to_tokens("ablate then add")
    layer = 2
    r = reg.vector("happy", layer)
    base = resid(tiny, toks, layer)
    with steer(tiny, reg, {"happy": 0.4}, op="ablate_add", layer=layer):
        got = resid(tiny, toks, layer)
    torch.testing.assert_close(got @ r, torch.full(got.shape[:2], 0.4 * reg.mean_norm(layer)),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(got - (got @ r)[..., None] * r, base - (base @ r)[..., None] * r,
                               atol=1e-4, rtol=0)


def test_raw_vectors_with_and_without_scale(tiny):
    toks = tiny.to_tokens("raw vector")
    v = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 5
    base = resid(tiny, toks, 1)
    with steer(tiny, v, 0.5, layer=1):
        got = resid(tiny, toks, 1)
    torch.testing.assert_close(got, base + 0.5 * v, atol=1e-5, rtol=0)
    with steer(tiny, {"mine": v}, {"mine": 0.5}, layer="blocks.1.hook_resid_post", scale=10.0):
        got = resid(tiny, toks, 1)
    torch.testing.assert_close(got, base + 0.5 * 10.0 * v / v.norm(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- positions while generating
def _record(model, steering, toks, *, cache, attention_mask=None, n_new=5):
    """Per forward call: (column offset, Bool [batch, n] of the positions steering changed)."""
    layer = steering.layer
    hp = model.hook_dict[f"blocks.{layer}.hook_resid_post"]
    before: dict[str, torch.Tensor] = {}
    calls: list[torch.Tensor] = []

    def pre(x, *, hook):
        before["x"] = x.clone()

    def post(x, *, hook):
        calls.append((x - before["x"]).abs().amax(-1) > 0)

    h1 = hp.add_hook(pre)
    handle = steering.apply(model)
    h2 = hp.add_hook(post)
    try:
        model.generate(toks, max_new_tokens=n_new, do_sample=False, verbose=False,
                       stop_at_eos=False, use_past_kv_cache=cache, attention_mask=attention_mask)
    finally:
        handle.remove()
        for h in (h1, h2):
            h.hook.remove()
            hp.fwd_hooks.remove(h)
    return calls


def _expected_calls(expected: torch.Tensor, prompt_len: int, n_new: int, cached: bool):
    """Slice a [batch, total] column map into what each forward call should change."""
    out = []
    for k in range(n_new):
        if cached and k > 0:
            out.append(expected[:, prompt_len + k - 1: prompt_len + k])
        else:
            out.append(expected[:, : prompt_len + k])
    return out


def _policies(batch_mask: torch.Tensor, prompt_len: int, total: int):
    b = batch_mask.shape[0]
    real = torch.cat([batch_mask.bool(), torch.ones(b, total - prompt_len, dtype=torch.bool)], 1)
    cols = torch.arange(total)
    first = batch_mask.long().argmax(-1)
    user_mask = torch.zeros(b, total, dtype=torch.bool)
    user_mask[0, [2, prompt_len + 1]] = True
    user_mask[1, [prompt_len - 1, prompt_len + 3]] = True
    idx = torch.zeros(b, total, dtype=torch.bool)
    for r in range(b):
        idx[r, first[r] + 1] = True  # index 1 from the row's first real token
        idx[r, prompt_len - 1] = True  # -1: the last prompt token
        if first[r] + 6 < total:
            idx[r, first[r] + 6] = True
    return {
        "all": real,
        "prompt": real & (cols < prompt_len),
        "generated": real & (cols >= prompt_len),
        "indices": idx,
        "mask": user_mask & real,
    }, {"all": "all", "prompt": "prompt", "generated": "generated", "indices": [1, -1, 6],
        "mask": user_mask}


# the native tiny model recomputes the whole sequence even with the cache: test the cache on the
# HF-backed tiny Llama, which decodes one position per step
@pytest.mark.parametrize(("fixture", "cache"), [("tiny", False), ("tiny_llama", False),
                                                ("tiny_llama", True)])
@pytest.mark.parametrize("kind", ["all", "prompt", "generated", "indices", "mask"])
@pytest.mark.parametrize("rows", [None, [1], "row mask"])
def test_positions_are_exact_at_every_decode_step(fixture, cache, kind, rows, request):
    """Each decode step steers exactly the policy's positions, in the selected rows only."""
    model = request.getfixturevalue(fixture)
    registry = make_registry(model, seed=2)
    batch = to_inputs(model, ["hello there", "a much longer prompt"], padding_side="left")
    prompt_len, n_new = batch.tokens.shape[1], 5
    expected, specs = _policies(batch.attention_mask, prompt_len, prompt_len + n_new)
    rows_arg = torch.tensor([True, False]) if rows == "row mask" else rows
    s = Steering(registry, {"calm": 0.8}, layer=1, positions=specs[kind], rows=rows_arg)
    calls = _record(model, s, batch.tokens, cache=cache, attention_mask=batch.attention_mask,
                    n_new=n_new)
    keep = torch.ones(2, 1, dtype=torch.bool)
    if rows_arg is not None:
        keep[:] = False
        keep[s.describe()["rows"]] = True
    cached = cache and fixture == "tiny_llama"  # the native bridge always re-runs the sequence
    want = _expected_calls(expected[kind] & keep, prompt_len, n_new, cached)
    assert [c.shape for c in calls] == [w.shape for w in want]
    for k, (got, exp) in enumerate(zip(calls, want)):
        assert torch.equal(got, exp), f"rows {rows}, decode step {k}: steered " \
                                      f"{got.nonzero().tolist()}, expected {exp.nonzero().tolist()}"


def test_positions_are_relative_to_the_first_real_token(tiny_llama):
    """A left-padded row is steered at the same tokens as the row alone."""
    registry = make_registry(tiny_llama, seed=4)
    s = Steering(registry, {"happy": 1.0}, layer=0, positions=[0, 2, -2])
    alone = to_inputs(tiny_llama, ["hi"])
    calls_alone = _record(tiny_llama, s, alone.tokens, cache=True, n_new=2)
    batch = to_inputs(tiny_llama, ["hi", "a longer prompt here"], padding_side="left")
    calls_batch = _record(tiny_llama, s, batch.tokens, cache=True,
                          attention_mask=batch.attention_mask, n_new=2)
    pad = int(batch.tokens.shape[1] - alone.tokens.shape[1])
    assert torch.equal(calls_batch[0][0, pad:], calls_alone[0][0])
    assert not calls_batch[0][0, :pad].any()


@pytest.mark.parametrize("fixture", ["tiny_llama"])  # a model that decodes from the cache
@pytest.mark.parametrize("op,spec,positions", [
    ("add", {"calm": 1.5}, "all"),
    ("add", {"desperate": 2.0, "happy": -1.0}, "generated"),
    ("add", {"calm": 3.0}, "prompt"),
    ("add", {"calm": 3.0}, [1, -1]),
    ("ablate", ["calm", "happy"], "all"),
    ("clamp", {"happy": 1.0}, "generated"),
])
def test_greedy_generation_same_with_and_without_kv_cache_under_steering(
        fixture, op, spec, positions, request):
    model = request.getfixturevalue(fixture)
    registry = make_registry(model, seed=5)
    batch = to_inputs(model, ["hello there friend", "ok"], padding_side="left")
    outs = []
    for cache in (False, True):
        with steer(model, registry, spec, op=op, layers=[0, 1], positions=positions):
            outs.append(model.generate(batch.tokens, max_new_tokens=12, do_sample=False,
                                       use_past_kv_cache=cache, verbose=False, stop_at_eos=False,
                                       attention_mask=batch.attention_mask))
    assert outs[0].tolist() == outs[1].tolist()


def test_strong_steering_changes_the_output(tiny_llama):
    toks = tiny_llama.to_tokens("hello there friend")
    plain = tiny_llama.generate(toks, max_new_tokens=10, do_sample=False, verbose=False,
                                stop_at_eos=False)
    with steer(tiny_llama, random_direction(64, seed=1), 30.0, layer=1):
        steered = tiny_llama.generate(toks, max_new_tokens=10, do_sample=False, verbose=False,
                                      stop_at_eos=False)
    assert plain.tolist() != steered.tolist()


# ---------------------------------------------------------------- hook hygiene
def test_hooks_are_removed_after_the_block_and_after_an_exception(tiny_llama, reg_llama):
    before = hook_counts(tiny_llama)
    with steer(tiny_llama, reg_llama, {"calm": 0.1}, layers="all") as h:
        assert h.active and hook_counts(tiny_llama) != before
    assert hook_counts(tiny_llama) == before and not h.active
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny_llama, reg_llama, {"calm": 0.1}, layers="all"):
            raise RuntimeError("boom")
    assert hook_counts(tiny_llama) == before
    handle = Steering(reg_llama, {"calm": 0.1}).apply(tiny_llama)
    handle.remove()
    handle.remove()  # idempotent
    assert hook_counts(tiny_llama) == before


def test_user_hooks_installed_before_are_left_alone(tiny_llama, reg_llama):
    name = f"blocks.{reg_llama.default_layer}.hook_resid_post"
    seen: list[int] = []

    def mine(x, *, hook):
        seen.append(x.shape[1])

    tiny_llama.add_hook(name, mine)
    tiny_llama.add_perma_hook("blocks.0.hook_resid_post", mine)
    try:
        counts = hook_counts(tiny_llama)
        with steer(tiny_llama, reg_llama, {"calm": 0.1}, layers="all"):
            tiny_llama(tiny_llama.to_tokens("abc"))
        assert hook_counts(tiny_llama) == counts
        seen.clear()
        tiny_llama(tiny_llama.to_tokens("abc"))
        assert len(seen) == 2
    finally:
        tiny_llama.reset_hooks(including_permanent=True)


def test_user_hooks_inside_model_hooks_context_survive(tiny, reg):
    name = "blocks.1.hook_resid_post"
    fired: list[bool] = []
    with tiny.hooks(fwd_hooks=[(name, lambda x, hook: fired.append(True))]):
        with steer(tiny, reg, {"calm": 0.1}, layer=1):
            tiny(tiny.to_tokens("x"))
        tiny(tiny.to_tokens("x"))
    assert fired == [True, True]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(spec={"clam": 0.1}), r"'clam'.*did you mean 'calm'"),
    (dict(spec={"calm": float("nan")}), r"strength for 'calm' is nan"),
    (dict(spec={"calm": float("inf")}), r"strength for 'calm' is inf"),
    (dict(spec={"calm": "0.1"}), r"strength for 'calm' is '0.1'"),
    (dict(spec={}), r"non-empty mapping"),
    (dict(spec="calm"), r"spec 'calm' gives no strength"),
    (dict(spec=0.1), r"bare strength \(0.1\) needs a single direction"),
    (dict(spec={"calm": 0.1}, op="multiply"), r"unknown op 'multiply'"),
    (dict(spec={"calm": 0.1}, positions="middle"), r"unknown positions 'middle'"),
    (dict(spec={"calm": 0.1}, positions=[1.5]), r"position index 1.5"),
    (dict(spec={"calm": 0.1}, positions=[]), r"selects no token"),
    (dict(spec={"calm": 0.1}, positions=torch.ones(2, 3)), r"boolean mask"),
    (dict(spec={"calm": 0.1}, layer=1, layers=[1]), r"not both"),
])
def test_bad_specs_raise_steering_error_naming_the_value(reg, kwargs, match):
    with pytest.raises(SteeringError, match=match):
        Steering(reg, **kwargs)


def test_errors_found_against_the_model(tiny, tiny_llama, reg):
    with pytest.raises(SteeringError, match=r"layer 7.*not in this registry"):
        Steering(reg, {"calm": 0.1}, layer=7).apply(tiny)
    with pytest.raises(SteeringError, match="no default layer"):
        Steering(torch.ones(64), 0.1).apply(tiny)
    with pytest.raises(SteeringError, match="has 32 dims but the model's d_model is 64"):
        Steering(torch.ones(32), 0.1, layer=0).apply(tiny)
    with pytest.raises(SteeringError, match="zero or contains NaN"):
        Steering(torch.zeros(64), 0.1, layer=0).apply(tiny)
    with pytest.raises(ModelMismatchError, match="model id"):
        Steering(reg, {"calm": 0.1}).apply(tiny_llama)
    with pytest.raises(SteeringError, match="batch size 3"):
        with steer(tiny, reg, {"calm": 0.1}, positions=torch.ones(3, 4, dtype=torch.bool)):
            tiny(tiny.to_tokens("abc"))
    assert hook_counts(tiny)[1:] == (0, 0)


def test_errors_are_emolens_and_value_errors(reg):
    with pytest.raises(ValueError):
        Steering(reg, {"calm": float("nan")})
    with pytest.raises(emolens.EmolensError):
        Steering(reg, {"calm": 0.1}, op="nope")


# ---------------------------------------------------------------- helpers and records
def test_describe_is_json_ready(reg):
    d = Steering(reg, {"calm": 0.05}, positions=[1, -1]).describe()
    assert json.loads(json.dumps(d))["spec"] == {"calm": 0.05}
    assert "mean residual" in d["units"]


def test_measure_mean_norm_and_random_direction(tiny):
    norms = measure_mean_norm(tiny, ["some text here", "and another one"], layers=[0, 3])
    assert set(norms) == {0, 3} and all(v > 0 and math.isfinite(v) for v in norms.values())
    a, b = random_direction(64, seed=1), random_direction(64, seed=1)
    assert torch.equal(a, b) and abs(float(a.norm()) - 1) < 1e-6
    assert not torch.equal(a, random_direction(64, seed=2))


# ---------------------------------------------------------------- control vectors (llama.cpp)
def test_control_vector_round_trip_and_layer_mapping(tmp_path, tiny, reg):
    import gguf

    from emolens.steering.control_vectors import (
        control_vector_metadata,
        export_control_vector,
        import_control_vector,
        llama_cpp_layer,
        steerings_from_control_vector,
    )

    path = export_control_vector(reg, {"calm": 1.0, "happy": -0.5}, tmp_path / "cv.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]  # atomic: no temp file left
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.layer_count"].contents() == 3
    assert isinstance(reader.fields["controlvector.model_hint"].contents(), str)
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2", "direction.3"]
    assert all(t.tensor_type.name == "F32" and list(t.shape) == [64] for t in reader.tensors)
    vecs = import_control_vector(path)
    assert list(vecs) == [1, 2, 3]  # block 0's output cannot be addressed by llama.cpp
    for n, v in vecs.items():
        want = reg.mean_norm(n) * (reg.vector("calm", n) - 0.5 * reg.vector("happy", n))
        torch.testing.assert_close(v, want, atol=1e-6, rtol=0)
    meta = control_vector_metadata(path)
    assert meta["emolens.spec"] == {"calm": 1.0, "happy": -0.5}
    assert meta["emolens.sites"]["2"] == "blocks.2.hook_resid_post"
    assert llama_cpp_layer("blocks.5.hook_resid_pre") == 4
    # loading with a scale steers like steer(...) with that strength at the exported layers
    toks = tiny.to_tokens("control vector")
    with steer(tiny, steerings_from_control_vector(path, strength=0.1)):
        _, got = tiny.run_with_cache(toks)
    with steer(tiny, reg, {"calm": 0.1, "happy": -0.05}, layers=[1, 2, 3]):
        _, want = tiny.run_with_cache(toks)
    for n in (1, 2, 3):
        name = f"blocks.{n}.hook_resid_post"
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)


def test_control_vector_errors(tmp_path, reg):
    from emolens.errors import FormatError
    from emolens.steering.control_vectors import export_control_vector, import_control_vector

    with pytest.raises(SteeringError, match="output of block 0"):
        export_control_vector(reg, "calm", tmp_path / "a.gguf", layers=[0])
    with pytest.raises(SteeringError, match="'clam'"):
        export_control_vector(reg, "clam", tmp_path / "a.gguf")
    with pytest.raises(FormatError, match="no control-vector file"):
        import_control_vector(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(FormatError, match="not a readable GGUF"):
        import_control_vector(tmp_path / "junk.gguf")
    assert not (tmp_path / "a.gguf").exists()


# ---------------------------------------------------------------- judges, sweep, word test
def _manual_word_logprob(model, context_ids, word):
    wids = model.to_tokens(" " + word, prepend_bos=False)[0].tolist()
    ids = torch.tensor([context_ids + wids])
    with torch.no_grad():
        logp = model(ids).log_softmax(-1)[0]
    n = len(context_ids)
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(wids)))


def test_word_logprobs_sum_every_token_of_the_word(tiny):
    from emolens.steering.judges import question_context, word_logprobs

    ctx = question_context(tiny, "It rained all day.")
    assert ctx[0].endswith("They feel") and ctx[1] is False
    chat = question_context(tiny, [{"role": "user", "content": "hi"}], "hello")
    assert chat[1] and chat[0].endswith("<|im_start|>assistant\nThey feel")
    got = word_logprobs(tiny, [ctx, chat], ["calm", "desperate"], batch_size=3)
    ids = tiny.to_tokens(ctx[0])[0].tolist()
    assert abs(float(got[0, 0]) - _manual_word_logprob(tiny, ids, "calm")) < 1e-4
    ids = tiny.to_tokens(chat[0], prepend_bos=False)[0].tolist()
    assert abs(float(got[1, 1]) - _manual_word_logprob(tiny, ids, "desperate")) < 1e-4


def test_sweep_table_and_plot(tiny, reg):
    from emolens.generation import generate
    from emolens.steering.judges import DirectionJudge
    from emolens.steering.sweeps import plot_sweep, sweep

    prompts = ["Once upon a time", [{"role": "user", "content": "How are you?"}]]
    judge = DirectionJudge(random_direction(64, seed=9), 2, name="probe")
    df = sweep(tiny, reg, "calm", [0.0, 2.0], prompts, max_new_tokens=4, progress=False,
               judges=("emotion_words", "lexicon", judge))
    assert len(df) == 4 and set(df["strength"]) == {0.0, 2.0}
    for col in ("prompt", "strength", "text", "emotion_words", "emotion_words_logp", "lexicon",
                "probe", "perplexity", "n_tokens"):
        assert col in df.columns
    assert df["prompt"].tolist()[:2] == ["Once upon a time", "How are you?"]
    assert (df["emotion_words"] <= 0).all() and df["perplexity"].gt(0).all()
    assert df["lexicon"].between(-1, 1).all()
    base = generate(tiny, prompts, max_new_tokens=4)
    assert df[df.strength == 0.0]["text"].tolist() == base.texts
    assert df.attrs["emotion"] == "calm" and "mean residual" in df.attrs["units"]
    fig = plot_sweep(df, "emotion_words")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) >= 1
    with pytest.raises(emolens.errors.InputError, match="no column 'nope'"):
        plot_sweep(df, "nope")
    with pytest.raises(emolens.errors.InputError, match="unknown judge 'vibes'"):
        sweep(tiny, reg, "calm", [0.0], prompts, judges=("vibes",), progress=False)
    with pytest.raises(SteeringError, match="strength nan"):
        sweep(tiny, reg, "calm", [float("nan")], prompts, progress=False)


def test_emotion_word_test_matches_a_manual_delta(tiny, reg):
    from emolens.steering.judges import question_context, word_logprobs
    from emolens.steering.sweeps import emotion_word_test

    prompts = ["The meeting is at noon.", "Water boils at 100 degrees."]
    emos = ["calm", "happy"]
    res = emotion_word_test(tiny, reg, emos, strength=1.0, prompts=prompts, layer=2)
    assert res.deltas.shape == (2, 2) and res.control_deltas.shape == (2, 2)
    assert 0 <= res.hits <= 2 and 0 <= res.control_hits <= 2
    assert res.hits == len(res.hit_emotions)
    ctx = [question_context(tiny, p) for p in prompts]
    base = word_logprobs(tiny, ctx, emos)
    with steer(tiny, reg, {"happy": 1.0}, layer=2):
        lp = word_logprobs(tiny, ctx, emos)
    torch.testing.assert_close(torch.tensor(res.deltas.loc["happy"].to_numpy()),
                               (lp - base).mean(0), atol=1e-4, rtol=0)
    assert not res.deltas.equals(res.control_deltas)
    assert json.loads(json.dumps(res.to_dict()))["n_emotions"] == 2
    assert "emotions raise their own word" in repr(res)
    with pytest.raises(SteeringError, match="strength=0"):
        emotion_word_test(tiny, reg, strength=0, prompts=prompts)


def test_neutral_loss_and_kl(tiny, reg):
    from emolens.steering.sweeps import neutral_kl, neutral_loss

    texts = ["The train leaves at nine.", [{"role": "user", "content": "List three colours."},
                                           {"role": "assistant", "content": "Red, green, blue."}]]
    plain = neutral_loss(tiny, None, texts)
    b = to_inputs(tiny, texts)
    with torch.no_grad():
        logits = tiny(b.tokens, **b.forward_kwargs())
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, b.tokens[:, 1:, None])[..., 0]
    manual = float(nll[b.content_mask[:, 1:]].mean())
    assert abs(plain - manual) < 1e-4
    strong = Steering(reg, {"calm": 5.0}, layers="all")
    assert abs(neutral_loss(tiny, strong, texts) - plain) > 1e-3  # a random model: no sign
    assert neutral_kl(tiny, strong, texts) > 0.01
    assert abs(neutral_kl(tiny, Steering(reg, {"calm": 0.0}), texts)) < 1e-6


def test_neutral_kls_equals_each_conditions_kl_and_a_manual_one(tiny, reg):
    from emolens.steering.interventions import apply_steering
    from emolens.steering.sweeps import neutral_kl, neutral_kls

    texts = ["The train leaves at nine.", "Put the cups on the shelf, please."]
    conds = [Steering(reg, {"calm": 5.0}, layers="all"), None,
             [Steering(reg, {"calm": 2.0}), Steering(reg, {"calm": -1.0}, layers=[1])]]
    many = neutral_kls(tiny, conds, texts, batch_size=1)
    assert many == pytest.approx([neutral_kl(tiny, c, texts) for c in conds], abs=1e-6)
    assert many[1] == pytest.approx(0.0, abs=1e-7) and many[0] > 0.01
    b = to_inputs(tiny, texts)
    with torch.no_grad():
        p = tiny(b.tokens, **b.forward_kwargs())[:, :-1].log_softmax(-1)
        h = apply_steering(tiny, [conds[0]])
        try:
            q = tiny(b.tokens, **b.forward_kwargs())[:, :-1].log_softmax(-1)
        finally:
            h.remove()
    real = b.attention_mask[:, :-1].bool() & b.attention_mask[:, 1:].bool()
    mask = real & (b.content_mask[:, :-1] | b.content_mask[:, 1:])
    manual = float((p.exp() * (p - q)).sum(-1)[mask].mean())
    assert many[0] == pytest.approx(manual, rel=1e-4)
    with pytest.raises(emolens.errors.InputError, match="empty"):
        neutral_kls(tiny, conds, [])


# ---------------------------------------------------------------- command line
def test_cli_parse_spec_and_export(tmp_path, reg, capsys):
    import argparse

    from emolens.steering.cli import add_arguments, main, parse_spec
    from emolens.steering.control_vectors import import_control_vector

    assert parse_spec(["calm=0.05,desperate=-0.05", "happy=1"]) == {
        "calm": 0.05, "desperate": -0.05, "happy": 1.0}
    with pytest.raises(SteeringError, match="name=strength"):
        parse_spec(["calm"])
    with pytest.raises(SteeringError, match="'x' for 'calm' is not a number"):
        parse_spec(["calm=x"])
    reg.save(tmp_path / "reg")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["export", "--registry", str(tmp_path / "reg"), "--spec", "calm=1",
                              "--layers", "2", "3", "--out", str(tmp_path / "calm.gguf")])
    assert main(args) == 0
    assert list(import_control_vector(tmp_path / "calm.gguf")) == [2, 3]
    assert "direction.N = output of block N" in capsys.readouterr().out
    assert main(parser.parse_args([])) == 0


# ---------------------------------------------------------------- rows: per-row steering
ROW_PROMPTS = ["hello there", "a much longer prompt", "mid size"]


def _padded(model):
    return to_inputs(model, ROW_PROMPTS, padding_side="left")


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
@pytest.mark.parametrize("op,spec", [
    ("add", {"calm": 0.7}),
    ("ablate", ["calm", "happy"]),
    ("clamp", {"happy": 0.5, "desperate": -0.3}),
    ("ablate_add", {"calm": 0.4}),
])
@pytest.mark.parametrize("positions", ["all", "prompt", [1, -1]])
def test_rows_change_only_those_rows(fixture, op, spec, positions, request):
    model = request.getfixturevalue(fixture)
    registry = make_registry(model, seed=6)
    b = _padded(model)
    layer = 1
    kw = dict(attention_mask=b.attention_mask)
    name = f"blocks.{layer}.hook_resid_post"
    base_logits, base = model.run_with_cache(b.tokens, names_filter=[name], **kw)
    with steer(model, registry, spec, op=op, layer=layer, positions=positions):
        full_logits, full = model.run_with_cache(b.tokens, names_filter=[name], **kw)
    with steer(model, registry, spec, op=op, layer=layer, positions=positions, rows=[0, 2]):
        got_logits, got = model.run_with_cache(b.tokens, names_filter=[name], **kw)
    # the unsteered row is bit-identical to an unsteered run, at the site and downstream
    assert torch.equal(got[name][1], base[name][1])
    assert torch.equal(got_logits[1], base_logits[1])
    # the steered rows are what steering every row gives them
    for r in (0, 2):
        torch.testing.assert_close(got[name][r], full[name][r], atol=1e-5, rtol=0)
        torch.testing.assert_close(got_logits[r], full_logits[r], atol=1e-4, rtol=0)
    changed = (got[name] - base[name]).abs().amax(-1) > 0
    assert changed[[0, 2]].any() and not changed[1].any()
    assert not changed[~b.attention_mask.bool()].any()  # pads are never modified


def test_rows_add_is_exact_and_a_mask_equals_indices(tiny, reg):
    b = _padded(tiny)
    layer = reg.default_layer
    base = resid(tiny, b.tokens, layer, attention_mask=b.attention_mask)
    with steer(tiny, reg, {"calm": 0.3}, rows=[2]):
        got = resid(tiny, b.tokens, layer, attention_mask=b.attention_mask)
    with steer(tiny, reg, {"calm": 0.3}, rows=torch.tensor([False, False, True])):
        got_mask = resid(tiny, b.tokens, layer, attention_mask=b.attention_mask)
    assert torch.equal(got, got_mask)
    real = b.attention_mask[2].bool()  # row 2 is left-padded: pads stay as they are
    want = base[2, real] + 0.3 * reg.mean_norm(layer) * reg.vector("calm", layer)
    torch.testing.assert_close(got[2, real], want, atol=1e-6, rtol=0)
    assert (~real).any() and torch.equal(got[2, ~real], base[2, ~real])
    assert torch.equal(got[:2], base[:2])


def test_disjoint_rows_give_each_row_its_own_intervention(tiny_llama, reg_llama):
    b = _padded(tiny_llama)
    kw = dict(attention_mask=b.attention_mask)
    s1 = Steering(reg_llama, {"calm": 2.0}, layer=1)
    s2 = Steering(reg_llama, {"happy": -1.5}, layers=[0, 2], positions="prompt")
    with steer(tiny_llama, [s1.with_rows([0]), s2.with_rows([1, 2])]):
        got = tiny_llama(b.tokens, **kw)
    with steer(tiny_llama, s1):
        want1 = tiny_llama(b.tokens, **kw)
    with steer(tiny_llama, s2):
        want2 = tiny_llama(b.tokens, **kw)
    torch.testing.assert_close(got[0], want1[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1:], want2[1:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama"])  # a model that decodes from the cache
@pytest.mark.parametrize("op,spec,positions", [
    ("add", {"calm": 3.0}, "all"),
    ("add", {"desperate": 2.0, "happy": -1.0}, "generated"),
    ("add", {"calm": 3.0}, [1, -1]),
    ("ablate", ["calm", "happy"], "all"),
    ("clamp", {"happy": 1.0}, "generated"),
    ("ablate_add", {"calm": 2.0}, "prompt"),
])
def test_rows_greedy_same_with_and_without_kv_cache(fixture, op, spec, positions, request):
    model = request.getfixturevalue(fixture)
    registry = make_registry(model, seed=5)
    batch = to_inputs(model, ["hello there friend", "ok", "a third one"], padding_side="left")
    kw = dict(max_new_tokens=10, do_sample=False, verbose=False, stop_at_eos=False,
              attention_mask=batch.attention_mask)
    s = Steering(registry, spec, op=op, layers=[0, 1], positions=positions)
    outs = []
    for cache in (False, True):
        with steer(model, [s.with_rows([0, 2]), Steering(registry, {"calm": -2.0}, layer=2,
                                                         rows=[1])]):
            outs.append(model.generate(batch.tokens, use_past_kv_cache=cache, **kw))
    assert outs[0].tolist() == outs[1].tolist()
    with steer(model, s):
        full = model.generate(batch.tokens, use_past_kv_cache=True, **kw)
    assert outs[1][[0, 2]].tolist() == full[[0, 2]].tolist()


def test_rows_in_generate_leave_other_rows_as_unsteered(tiny_llama, reg_llama):
    from emolens.generation import generate

    prompts = ["hi", "a longer prompt here", "mid"]
    s = Steering(reg_llama, {"calm": 4.0}, layers=[0, 1], rows=[1])
    g = generate(tiny_llama, prompts, max_new_tokens=8, steering=s, stop_at_eos=False,
                 monitor=reg_llama)
    plain = generate(tiny_llama, prompts, max_new_tokens=8, stop_at_eos=False)
    full = generate(tiny_llama, prompts, max_new_tokens=8, stop_at_eos=False,
                    steering=s.with_rows(None))
    assert g.tokens[[0, 2]].tolist() == plain.tokens[[0, 2]].tolist()
    assert g.tokens[1].tolist() == full.tokens[1].tolist()
    assert g.steering[0]["rows"] == [1]
    assert g.readout is not None


def test_bad_rows(tiny, reg):
    before = hook_counts(tiny)
    toks = tiny.to_tokens(["abc", "def"])
    with pytest.raises(SteeringError, match=r"row index 2 is out of range.*batch of 2 rows"):
        with steer(tiny, reg, {"calm": 0.1}, rows=[0, 2]):
            tiny(toks)
    assert hook_counts(tiny) == before
    with pytest.raises(SteeringError, match=r"rows mask has 3 entries.*batch of 2"):
        with steer(tiny, reg, {"calm": 0.1}, rows=torch.tensor([True, False, True])):
            tiny(toks)
    from emolens.generation import generate

    with pytest.raises(SteeringError, match=r"row index 5 is out of range.*batch of 1 rows"):
        generate(tiny, "x", max_new_tokens=2, steering=Steering(reg, {"calm": 0.1}, rows=[5]))
    assert hook_counts(tiny) == before
    for rows, match in (([], "selects no row"), ([-1], "negative"), ([1.0], "not an int"),
                        (True, "not valid"), ("0", "cannot use rows"),
                        (torch.ones(2, 2, dtype=torch.bool), "1-D"),
                        (torch.tensor([0.5]), "dtype")):
        with pytest.raises(SteeringError, match=match):
            Steering(reg, {"calm": 0.1}, rows=rows)
    assert Steering(reg, {"calm": 0.1}, rows=[2, 0, 2]).describe()["rows"] == [0, 2]
    assert Steering(reg, {"calm": 0.1}, rows=torch.tensor([1])).row_selection == (1,)


# ---------------------------------------------------------------- batched sweep and word test
def _loop_sweep(model, registry, emotion, strengths, prompts, *, judges, max_new_tokens, layer,
                positions):
    """The sweep as it was before batching: one generate call per strength."""
    import pandas as pd

    from emolens.generation import generate
    from emolens.steering.judges import JudgeInput, resolve_judges
    from emolens.steering.sweeps import _prompt_label, sequence_perplexity

    rows, gens = [], []
    for s in strengths:
        st = None if s == 0 else Steering(registry, {emotion: float(s)}, layer=layer,
                                          positions=positions)
        g = generate(model, prompts, max_new_tokens=max_new_tokens, steering=st, seed=0)
        gens.append(g)
        inp = JudgeInput(model=model, prompts=prompts, replies=g.texts, tokens=g.tokens,
                         attention_mask=g.attention_mask, prompt_len=g.prompt_len,
                         emotion=emotion, words=list(registry.emotions))
        scores = {}
        for _, judge in resolve_judges(judges):
            scores.update(judge(inp))
        ppl = sequence_perplexity(model, g.tokens, g.attention_mask, g.prompt_len)
        n_tok = g.attention_mask[:, g.prompt_len:].sum(-1).tolist()
        for i, p in enumerate(prompts):
            row = {"prompt": _prompt_label(model, p), "prompt_index": i, "emotion": emotion,
                   "layer": layer, "strength": float(s), "text": g.texts[i],
                   "n_tokens": int(n_tok[i])}
            row.update({k: float(v[i]) for k, v in scores.items()})
            row["perplexity"] = ppl[i]
            rows.append(row)
    return pd.DataFrame(rows), gens


def _eos_registry(model, layer):
    """A registry whose 'calm' points at the unembedding of the stop token: strong steering at
    the last prompt token makes a row stop at once, so rows stop at different steps."""
    reg = make_registry(model, seed=7)
    dirs = torch.stack([reg.vector(e, lay) for lay in reg.layers for e in EMOTIONS])
    dirs = dirs.reshape(len(reg.layers), len(EMOTIONS), -1).clone()
    dirs[layer, 0] = model.W_U[:, model.tokenizer.eos_token_id].detach()
    return EmotionRegistry(dirs, EMOTIONS, [reg.site(lay) for lay in reg.layers],
                           torch.tensor([reg.mean_norm(lay) for lay in reg.layers]),
                           metadata={"model": emolens.model_provenance(model).to_dict()})


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
@pytest.mark.parametrize("positions,batch_size", [("all", 32), ("generated", 4), ([-1], 5),
                                                  ([-1], 1)])
def test_batched_sweep_equals_one_generate_per_strength(fixture, positions, batch_size,
                                                        request, monkeypatch):
    import pandas as pd

    from emolens.steering.judges import DirectionJudge
    from emolens.steering.sweeps import sweep, sweep_generations

    model = request.getfixturevalue(fixture)
    layer = 2
    registry = _eos_registry(model, layer) if positions == [-1] else make_registry(model, seed=8)
    strengths = [-1.5, 0, 2.0] if positions != [-1] else [0, 40.0, 0.5]
    prompts = ["Once upon a time", [{"role": "user", "content": "How are you?"}], "hi",
               "The weather today is"]
    judges = ("emotion_words", "lexicon", DirectionJudge(random_direction(64, seed=9), 1,
                                                         name="probe"))
    kw = dict(max_new_tokens=6, layer=layer, positions=positions)
    want, gens = _loop_sweep(model, registry, "calm", strengths, prompts, judges=judges, **kw)
    calls = []
    real_generate = type(model).generate

    def counting(self, *a, **k):
        calls.append(a[0].shape[0])
        return real_generate(self, *a, **k)

    monkeypatch.setattr(type(model), "generate", counting)
    got = sweep(model, registry, "calm", strengths, prompts, judges=judges, progress=False,
                batch_size=batch_size, **kw)
    n_rows = len(strengths) * len(prompts)
    assert calls == [min(batch_size, n_rows - i) for i in range(0, n_rows, batch_size)]
    monkeypatch.undo()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    batched = sweep_generations(model, registry, "calm", strengths, prompts,
                                batch_size=batch_size, **kw)
    for g, w in zip(batched, gens):  # token for token, same layout as one call per strength
        assert g.tokens.tolist() == w.tokens.tolist()
        assert g.attention_mask.tolist() == w.attention_mask.tolist()
        assert g.texts == w.texts and g.prompt_len == w.prompt_len
    if positions == [-1]:  # rows stopped at different steps (batch_size=1: rows of one
        assert len({g.tokens.shape[1] for g in gens}) > 1  # strength come from several calls)


def test_sweep_batch_size_is_checked(tiny, reg):
    from emolens.steering.sweeps import sweep

    with pytest.raises(emolens.errors.InputError, match="batch_size must be a positive int.*got 0"):
        sweep(tiny, reg, "calm", [0.0], ["x"], batch_size=0, progress=False)


def test_batched_word_test_equals_one_forward_per_emotion(tiny, reg):
    from emolens.steering.judges import question_context, word_logprobs
    from emolens.steering.sweeps import emotion_word_test

    prompts = ["The meeting is at noon.", [{"role": "user", "content": "List three colours."}],
               "Water boils at 100 degrees."]
    emos = ["calm", "desperate", "happy"]
    res = emotion_word_test(tiny, reg, emos, strength=1.0, prompts=prompts, layer=2,
                            positions="all", control_seed=3)
    ctx = [question_context(tiny, p) for p in prompts]
    base = word_logprobs(tiny, ctx, emos)
    site = reg.site(2).name
    for i, e in enumerate(emos):
        with steer(tiny, reg, {e: 1.0}, layer=2):
            lp = word_logprobs(tiny, ctx, emos)
        torch.testing.assert_close(torch.tensor(res.deltas.loc[e].to_numpy()),
                                   (lp - base).mean(0), atol=1e-4, rtol=0)
        with steer(tiny, random_direction(64, seed=3 + i), 1.0, layer=site,
                   scale=reg.mean_norm(2)):
            lp = word_logprobs(tiny, ctx, emos)
        torch.testing.assert_close(torch.tensor(res.control_deltas.loc[e].to_numpy()),
                                   (lp - base).mean(0), atol=1e-4, rtol=0)
    # batch composition does not matter
    small = emotion_word_test(tiny, reg, emos, strength=1.0, prompts=prompts, layer=2,
                              control_seed=3, batch_size=3)
    torch.testing.assert_close(torch.tensor(small.deltas.to_numpy()),
                               torch.tensor(res.deltas.to_numpy()), atol=1e-4, rtol=0)
