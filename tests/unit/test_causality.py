"""emolens.causality on tiny random models: exact patching, parity with TransformerLens,
placebo geometry, exact attribution, metrics, and the behavioural experiments end to end."""
from __future__ import annotations

import json
import types

import matplotlib
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from transformer_lens import patching as tlp

import emolens.causality as C
from emolens.causality._common import CausalityError, paired_positions, slice_batch
from emolens.causality.patching import make_interventions
from emolens.causality.report import (
    direction_patch_figure,
    dose_figure,
    patching_map_figure,
    preferences_figure,
    shortcut_figure,
)
from emolens.errors import InputError
from emolens.positions import position_mask
from emolens.registry import EmotionRegistry
from emolens.sites import Site
from emolens.tokens import to_inputs
from emolens.views import plot_component_writes

matplotlib.use("Agg")

CLEAN = ["The cat sat", "A dog ran!"]
CORRUPT = ["The rat sat", "A fog ran!"]
SHORT_CLEAN = ["Cat sat", "Dog ran"]
SHORT_CORRUPT = ["Rat sat", "Fog ran"]


def _registry(model, emotions=("calm", "desperate", "happy"), *, hook="resid_post", seed=0,
              vectors=None):
    L, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(L, len(emotions), d, generator=g) if vectors is None else vectors
    sites = [Site(layer, f"blocks.{layer}.hook_{hook}") for layer in range(L)]
    return EmotionRegistry(dirs, list(emotions), sites, torch.full((L,), 4.0),
                           default_layer=L - 2)


def _metric(logits):
    return logits[:, -1, 70].mean() - logits[:, -1, 80].mean()


# ------------------------------------------------------------------------- batched maps
MAPS = [
    (tlp.get_act_patch_resid_pre, C.patch_resid_pre),
    (tlp.get_act_patch_attn_out, C.patch_attn_out),
    (tlp.get_act_patch_mlp_out, C.patch_mlp_out),
    (tlp.get_act_patch_attn_head_out_all_pos, C.patch_head_out),
    (tlp.get_act_patch_attn_head_out_by_pos, C.patch_head_out_by_pos),
]


CASES = [(f, tl_fn, mine) for f in ("tiny", "tiny_llama") for tl_fn, mine in MAPS
         if not (f == "tiny_llama" and mine is C.patch_head_out_by_pos)]  # the slowest TL sweep


@pytest.mark.parametrize("fixture,tl_fn,mine", CASES,
                         ids=[f"{c[2].__name__}-{c[0]}" for c in CASES])
def test_batched_maps_equal_transformer_lens(request, fixture, tl_fn, mine):
    model = request.getfixturevalue(fixture)
    clean, corrupt = model.to_tokens(SHORT_CLEAN), model.to_tokens(SHORT_CORRUPT)
    assert clean.shape == corrupt.shape
    _, cache = model.run_with_cache(clean)
    ref = tl_fn(model, corrupt, cache, _metric).detach().cpu()
    got = mine(model, corrupt, cache, _metric, progress=False, max_tokens=60)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4
    assert got.std() > 1e-4                       # the patches do something


# get_act_patch_resid_mid: TransformerLens 4.3's own sweep is off on TransformerBridge models
# (its last-layer, last-position patch does not restore the clean metric, which it must: the
# rest of the block is per-position); emolens's is checked against that exact property below.
ALIAS_CASES = [("tiny", n) for n in C.TL_ALIASES if n != "get_act_patch_resid_mid"] + [
    ("tiny_llama", n) for n in ("get_act_patch_attn_head_k_all_pos",
                                "get_act_patch_attn_head_v_all_pos",
                                "get_act_patch_attn_head_q_all_pos")]


@pytest.mark.parametrize("fixture,name", ALIAS_CASES, ids=[f"{n}-{f}" for f, n in ALIAS_CASES])
def test_transformer_lens_named_aliases_equal_transformer_lens(request, fixture, name):
    model = request.getfixturevalue(fixture)
    clean, corrupt = model.to_tokens(SHORT_CLEAN), model.to_tokens(SHORT_CORRUPT)
    _, cache = model.run_with_cache(clean)
    ref = getattr(tlp, name)(model, corrupt, cache, _metric).detach().cpu()
    mine = getattr(C, name)
    got = mine(model, corrupt, cache, _metric, progress=False, max_tokens=60)  # TL's order
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4
    assert got.std() > 1e-5                       # the patches do something


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_resid_mid_patch_restores_clean_where_it_must(request, fixture):
    model = request.getfixturevalue(fixture)
    clean, corrupt = model.to_tokens(SHORT_CLEAN), model.to_tokens(SHORT_CORRUPT)
    clean_logits, cache = model.run_with_cache(clean)
    got = C.get_act_patch_resid_mid(model, corrupt, cache, _metric, progress=False)
    assert got.shape == (model.cfg.n_layers, clean.shape[1])
    # the metric reads the last position; after resid_mid of the last block only that
    # position's MLP follows, so patching it there gives the clean metric exactly
    assert float(got[-1, -1]) == pytest.approx(float(_metric(clean_logits.detach())), abs=1e-4)
    # the first token is the same in both prompts: patching it changes nothing
    corrupt_value = float(_metric(model(corrupt)).detach())
    assert torch.allclose(got[:, 0], torch.full_like(got[:, 0], corrupt_value), atol=1e-4)
    # an earlier position at the last block cannot reach the last position any more
    assert float(got[-1, 1]) == pytest.approx(corrupt_value, abs=1e-4)


def test_aliases_are_the_batched_functions():
    assert C.get_act_patch_resid_pre is C.patch_resid_pre
    assert C.get_act_patch_attn_head_out_all_pos is C.patch_head_out
    assert C.get_act_patch_attn_head_out_by_pos is C.patch_head_out_by_pos
    assert set(C.TL_ALIASES) <= set(C.__all__)
    assert all(hasattr(tlp, n) for n in C.TL_ALIASES)      # real TransformerLens names


def test_batched_map_reduce_none_and_index_df(tiny):
    clean, corrupt = tiny.to_tokens(SHORT_CLEAN), tiny.to_tokens(SHORT_CORRUPT)
    _, cache = tiny.run_with_cache(clean)

    def per_row(logits):
        return logits[:, -1, 70] - logits[:, -1, 80]
    full = C.patch_resid_pre(tiny, corrupt, cache, per_row, reduce="none", progress=False)
    assert full.shape == (tiny.cfg.n_layers, clean.shape[1], 2)
    mean = C.patch_resid_pre(tiny, corrupt, cache, _metric, progress=False)
    assert torch.allclose(full.mean(-1), mean, atol=1e-5)
    df = pd.DataFrame({"layer": [0, 2, 3], "pos": [1, 5, 7]})
    assert clean.shape[1] == 8
    flat = C.batched_activation_patch(tiny, corrupt, cache, _metric, "resid_pre",
                                      index_df=df, progress=False)
    assert torch.allclose(flat, torch.stack([mean[0, 1], mean[2, 5], mean[3, 7]]), atol=1e-5)
    sub = C.patch_resid_pre(tiny, corrupt, cache, _metric, layers=[1, 3], progress=False)
    assert torch.allclose(sub, mean[[1, 3]], atol=1e-5)
    with pytest.raises(CausalityError, match="scalar"):
        C.patch_resid_pre(tiny, corrupt, cache, per_row, progress=False)
    with pytest.raises(CausalityError, match="clean_cache has no"):
        C.patch_attn_out(tiny, corrupt, {}, _metric, progress=False)


def test_patching_map_wrapper(tiny):
    m = C.patching_map(tiny, "I feel angry today", "I feel happy today", _metric,
                       kind="resid_pre", progress=False)
    assert m.values.shape == (tiny.cfg.n_layers, len(m.tokens))
    # patching the whole residual at layer 0 at every position would restore clean; a single
    # position at layer 0 before the changed word changes nothing
    assert abs(float(m.values[0, 0]) - m.corrupted_value) < 1e-4
    s = m.summary()
    json.dumps(s)
    assert "PatchingMap" in m._repr_html_() and not hasattr(m, "plot")   # data only
    fig = patching_map_figure(m)
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "layer"
    assert len(m.to_frame()) == m.values.numel()
    with pytest.raises(CausalityError, match="same token length"):
        C.patching_map(tiny, "short", "a longer prompt", _metric, progress=False)


# ------------------------------------------------------------------------- directional patching
def _last_logit_metric(token):
    def fn(logits, batch):
        pos = batch.attention_mask.sum(-1) - 1
        return logits[torch.arange(len(batch)), pos, token]
    return fn


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_patching_whole_residual_reproduces_source(request, fixture):
    model = request.getfixturevalue(fixture)
    src, tgt = to_inputs(model, CLEAN), to_inputs(model, CORRUPT)
    d = int(model.cfg.d_model)
    res = C.patch_direction(model, src, tgt, torch.eye(d), sites=[1], positions="all",
                            metric=_last_logit_metric(70), n_placebo=2, progress=False)
    # effect = metric(patched) - metric(target) equals metric(source) - metric(target)
    per = res.per_pair
    assert torch.allclose(torch.tensor(per.effect.to_numpy()),
                          torch.tensor((per.source_value - per.target_value).to_numpy()),
                          atol=1e-4)
    assert res.full == pytest.approx(res.total, abs=1e-4)
    # the whole distribution is the source's
    with torch.no_grad():
        src_logits = model(src.tokens)
    last = src.lengths - 1
    kl = C.kl_to_reference(src_logits[torch.arange(len(src)), last], pos="last")
    res2 = C.patch_direction(model, src, tgt, torch.eye(d), sites=[1], positions="all",
                             metric=kl, n_placebo=1, include_full=False, progress=False)
    patched_kl = res2.per_pair.target_value + res2.per_pair.effect
    assert patched_kl.abs().max() < 1e-4


def test_placebo_matches_norm_and_rank():
    torch.manual_seed(0)
    d, k = 32, 3
    basis = C.orthonormal_basis(torch.randn(k, d))
    assert basis.shape == (d, k)
    conds = dict(make_interventions([basis], n_placebo=4, seed=5))
    base, source = torch.randn(50, d), torch.randn(50, d)
    real = conds["effect"][0](base, source) - base
    for j in range(4):
        plac = conds[f"placebo{j}"][0](base, source) - base
        assert torch.allclose(plac.norm(dim=-1), real.norm(dim=-1), atol=1e-5)
        assert torch.linalg.matrix_rank(plac, atol=1e-4) == k
        # a different subspace from the real one
        assert (plac - plac @ basis @ basis.T).norm() > 0.5 * plac.norm()
    assert torch.linalg.matrix_rank(real, atol=1e-4) == k
    assert not torch.allclose(conds["placebo0"][0].basis, conds["placebo1"][0].basis)
    full = conds["full"][0](base, source)
    assert torch.allclose(full, source, atol=1e-5)
    # same seed, same placebo
    again = dict(make_interventions([basis], n_placebo=1, seed=5))
    assert torch.equal(again["placebo0"][0].basis, conds["placebo0"][0].basis)


def _planted(model, n=12):
    """Source/target prompts and a registry whose 'calm' is the mean source-target difference
    at the reply position of the site."""
    src = [[{"role": "user", "content": f"Good news number {i}, all is well!"}] for i in range(n)]
    tgt = [[{"role": "user", "content": f"Bad news {i}: it all broke."}] for i in range(n)]
    layer = int(model.cfg.n_layers) - 2
    name = f"blocks.{layer}.hook_resid_post"
    diffs = []
    for texts in (src, tgt):
        b = to_inputs(model, texts)
        _, cache = model.run_with_cache(b.tokens, names_filter=[name],
                                        **b.forward_kwargs())
        x = cache[name][torch.arange(len(b)), b.reply_pos]
        diffs.append(x)
    v = (diffs[0] - diffs[1]).mean(0)
    d = int(model.cfg.d_model)
    other = torch.randn(d, generator=torch.Generator().manual_seed(3))
    other = other - (other @ v) / (v @ v) * v         # orthogonal to v
    vectors = torch.randn(int(model.cfg.n_layers), 2, d)
    vectors[layer, 0], vectors[layer, 1] = v, other
    reg = _registry(model, ("calm", "other"), vectors=vectors)
    return src, tgt, reg, layer


def test_patch_direction_finds_planted_effect_and_no_effect_where_none(tiny):
    src, tgt, reg, layer = _planted(tiny)
    metric = C.readout_at(reg, layer, "calm", pos="reply")
    res = C.patch_direction(tiny, src, tgt, reg, emotions=["calm"], layer=layer, metric=metric,
                            n_placebo=6, progress=False)
    # readout at the patched site along the patched direction: the source's value, exactly
    assert res.effect == pytest.approx(res.total, rel=1e-4, abs=1e-4)
    assert res.fraction_of_full == pytest.approx(1.0, abs=1e-3)
    assert abs(res.placebo) < 0.5 * abs(res.effect)
    assert res.p_value < 0.01 and res.ci[0] > 0
    assert "exceeds the placebo" in res.statement and "Not established" in res.statement
    s = res.summary()
    json.dumps(s)
    assert s["rank"] == 1 and s["n_pairs"] == 12 and len(s["placebo_draw_means"]) == 6
    assert "DirectionPatchResult" in res._repr_html_() and not hasattr(res, "plot")
    fig = direction_patch_figure(res)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "directions", "placebo (mean of draws)", "whole activation"]
    # patching an orthogonal direction leaves the readout along 'calm' untouched
    null = C.patch_direction(tiny, src, tgt, reg, emotions=["other"], layer=layer,
                             metric=metric, n_placebo=3, progress=False)
    assert abs(null.effect) < 1e-4
    assert "No effect is established" in null.statement


def test_patch_direction_validates(tiny):
    reg = _registry(tiny)
    metric = _last_logit_metric(70)
    with pytest.raises(CausalityError, match="one source per target"):
        C.patch_direction(tiny, ["a b", "c d"], ["e f"], reg, metric=metric, progress=False)
    with pytest.raises(CausalityError, match="sites="):
        C.patch_direction(tiny, ["a b"], ["e f"], torch.randn(2, 64), metric=metric)
    with pytest.raises(CausalityError, match="placebo is not optional"):
        C.patch_direction(tiny, ["a b"], ["e f"], reg, metric=metric, n_placebo=0)
    with pytest.raises(CausalityError, match="select"):
        C.patch_direction(tiny, ["a b c d e"], ["e f"], reg, metric=metric, positions="all")


# ------------------------------------------------------------------------- positions & metrics
def test_positions(tiny):
    b = to_inputs(tiny, ["abc", "abcdef", [{"role": "user", "content": "hi"}]])
    lengths = b.lengths.tolist()
    m = position_mask(b, "last")
    assert m.sum(-1).tolist() == [1, 1, 1]
    assert m[0, lengths[0] - 1] and m[1, lengths[1] - 1]
    assert position_mask(b, "reply_or_last")[2, int(b.reply_pos[2])]
    assert position_mask(b, "reply_or_last")[0, lengths[0] - 1]
    assert position_mask(b, "all").sum() == b.attention_mask.sum()
    assert position_mask(b, "content").sum() == b.attention_mask.sum() - 3
    assert position_mask(b, [0, -1]).sum(-1).tolist() == [2, 2, 2]
    with pytest.raises(InputError, match="does not exist"):
        position_mask(b, 5)
    with pytest.raises(InputError, match="unknown position policy 'middle'"):
        position_mask(b, "middle")
    left = to_inputs(tiny, ["abc", "abcdef"], padding_side="left")
    assert position_mask(left, 0).int().argmax(-1).tolist() == left.first_pos.tolist()
    r, t, s = paired_positions(to_inputs(tiny, ["ab"]), to_inputs(tiny, ["abcd"]), "last")
    assert t.tolist() == [4] and s.tolist() == [2]


def test_metrics(tiny):
    b = to_inputs(tiny, [[{"role": "user", "content": "Pick A or B"}]] * 2)
    logits = torch.randn(2, b.tokens.shape[1], int(tiny.cfg.d_vocab))
    ld = C.logit_diff("A", "B").bind(tiny)
    a_id = tiny.tokenizer.encode("A", add_special_tokens=False)
    b_id = tiny.tokenizer.encode("B", add_special_tokens=False)
    rp = b.reply_pos
    expect = logits[torch.arange(2), rp, a_id[0]] - logits[torch.arange(2), rp, b_id[0]]
    assert torch.allclose(ld(logits, b), expect)
    pa = C.answer_prob("A", among=["A", "B"]).bind(tiny)(logits, b)
    pb = C.answer_prob("B", among=["A", "B"]).bind(tiny)(logits, b)
    assert torch.allclose(pa + pb, torch.ones(2))
    per_row = C.logit_diff(torch.tensor([3, 4]), torch.tensor([5, 6])).bind(tiny)
    got = per_row(logits[1:], slice_batch(b, slice(1, 2)),
                  rows=torch.tensor([1]))
    assert torch.allclose(got, logits[1:, rp[1], 4] - logits[1:, rp[1], 6])
    with pytest.raises(InputError, match="tokens"):
        C.logit_diff("AB", "B").bind(tiny)
    with pytest.raises(CausalityError, match="bind"):
        C.logit_diff("A", "B")(logits, b)
    wrapped = C.as_metric(lambda lg, batch: lg[:, -1, 0])
    assert wrapped(logits, b).shape == (2,)
    with pytest.raises(CausalityError, match="one value per prompt"):
        C.as_metric(lambda lg, batch: lg[:, -1])(logits, b)


# ------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
@pytest.mark.parametrize("hook", ["resid_post", "resid_pre", "resid_mid"])
def test_attribution_is_exact(request, fixture, hook):
    model = request.getfixturevalue(fixture)
    reg = _registry(model, hook=hook)
    att = C.direction_attribution(model, ["Hello there, friend.", "A short one"], reg,
                                  layer=1)
    assert att.max_abs_error < 1e-4
    rem = att.values[:, :, att.components.index("remainder")]
    assert rem.abs().max() < 1e-4
    n_heads = int(model.cfg.n_heads)
    n_blocks = {"resid_pre": 1, "resid_mid": 1, "resid_post": 2}[hook]
    assert sum(c.startswith("L0.H") for c in att.components) == n_heads
    assert sum(c.endswith(".mlp") for c in att.components) == n_blocks
    assert ("L1.H0" in att.components) == (hook != "resid_pre")
    df = att.top("calm", k=4)
    assert len(df) == 4
    json.dumps(att.summary())
    assert "DirectionAttribution" in att._repr_html_() and not hasattr(att, "plot")
    grid, layers, cols = att.grid("calm")
    pooled = att.pooled()[:, att.emotions.index("calm")]
    assert grid.shape == (len(layers), n_heads + 2) and cols[-2:] == ["b_O", "MLP"]
    assert grid[0, 0] == pooled[att.components.index("L0.H0")]
    assert grid[0, -1] == pooled[att.components.index("L0.mlp")]
    assert isinstance(plot_component_writes(grid, layers, cols), Figure)


def test_logit_effects(tiny):
    reg = _registry(tiny)
    eff = C.direction_logit_effects(tiny, reg, top_k=5)
    assert set(eff.promoted) == set(reg.emotions)
    for e in reg.emotions:
        assert len(eff.promoted[e]) == 5
        assert eff.promoted[e][0][1] > 0 > eff.suppressed[e][0][1]
    assert len(eff.to_frame()) == 30
    json.dumps(eff.summary())


# ------------------------------------------------------------------------- behaviour
def test_bundled_data():
    scen = C.load_shortcut_scenarios()
    acts = C.load_activities()
    assert len(scen) >= 40 and len({s.id for s in scen}) == len(scen)
    assert {s.kind for s in scen} == {"hardcode", "skip_check", "misreport"}
    assert len(acts) >= 32
    assert {a.category for a in acts} == {"helpful", "neutral", "unpleasant", "harmful"}


def test_shortcut_experiment_runs(tiny):
    reg = _registry(tiny)
    scen = C.load_shortcut_scenarios()[:3]
    res = C.shortcut_experiment(tiny, reg, emotions=["calm"], strengths=[0.2], scenarios=scen,
                                progress=False)
    assert len(res.frame) == 3 * 6                   # unsteered, calm, random x 6 prompts
    assert res.frame.p_shortcut.between(0, 1).all()
    s = res.summary
    json.dumps(s)
    assert s["n_scenarios"] == 3 and len(s["conditions"]) == 2
    calm = next(c for c in s["conditions"] if c["condition"] == "calm")
    assert "minus_random_same_strength" in calm
    curves = res.frames["curves"]                    # the figure's data
    per = res.frames["per_scenario"]
    calm_pts = curves[curves.condition == "calm"]
    assert calm_pts.strength.tolist() == [0.0, 0.2]  # the unsteered point, then the strength
    assert calm_pts["mean"].iloc[1] == pytest.approx(
        per[per.condition == "calm"].p_shortcut.mean())
    assert (curves.low <= curves["mean"] + 1e-12).all()
    assert (curves["mean"] <= curves.high + 1e-12).all()
    assert isinstance(shortcut_figure(res), Figure)
    # steering changes the answer probabilities (a tiny random model is sensitive)
    base = res.frame[res.frame.condition == "unsteered"].p_shortcut.to_numpy()
    steered = res.frame[res.frame.condition == "calm"].p_shortcut.to_numpy()
    assert abs(base - steered).max() > 1e-6


def test_preference_experiment_runs(tiny):
    reg = _registry(tiny)
    acts = C.load_activities()[::4][:8]              # two of each category
    res = C.preference_experiment(tiny, reg, activities=acts, steer_emotions=["calm", "happy"],
                                  n_opponents=1, progress=False)
    s = res.summary
    json.dumps(s)
    assert s["n_prompts"] == 8 * 7
    assert len(res.frame) == 8 and abs(res.frame.elo.mean()) < 1e-3
    assert set(s["steering"]["elo_shift"]) == {"calm", "happy", "random"}
    assert s["steering"]["n_steered"] == 4
    assert set(res.frames["steering"].emotion) == {"calm", "happy", "random"}
    em = res.frames["emotions"].set_index("emotion")
    assert em.loc["calm", "elo_shift"] == s["steering"]["elo_shift"]["calm"]["value"]
    assert em.loc["desperate", "elo_shift"] != em.loc["desperate", "elo_shift"]   # NaN
    assert em.loc["happy", "r"] == s["readout_elo_correlation"]["happy"]["value"]
    assert isinstance(preferences_figure(res), Figure)


def test_dose_response_runs(tiny):
    reg = _registry(tiny)
    t = types.SimpleNamespace(id="template-x", text="I have {X} apples.", values=[1, 2, 4, 8],
                              expected={"happy": "up", "sad": "down"})
    res = C.dose_response(tiny, reg, templates=[t], progress=False)
    s = res.summary
    json.dumps(s)
    assert s["n_prompts"] == 4 and s["n_expectations"] == 1
    assert {c["status"] for c in s["checks"]} & {"emotion not in registry"}
    assert len(res.frame) == 4 * 3
    fig = dose_figure(res)
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "x"
    assert len(fig.axes[0].get_lines()) == 1          # 'happy' only: 'sad' is not scored


def test_span_masks_cover_activity_tokens(tiny):
    from emolens.causality.preferences import preference_prompt, span_masks

    b = to_inputs(tiny, [preference_prompt("swim", "read a book")])
    t = b.texts[0]
    sa = t.index("(A) swim") + 4
    sb = t.index("(B) read a book") + 4
    ma, mb = span_masks(tiny, b, [[(sa, sa + 4), (sb, sb + 11)]])
    toks = b.str_tokens(tiny)[0]
    assert "".join(toks[i] for i in ma[0].nonzero().flatten().tolist()) == "swim"
    assert "".join(toks[i] for i in mb[0].nonzero().flatten().tolist()) == "read a book"


def test_run_causality_small(tiny):
    reg = _registry(tiny, ("calm", "desperate", "happy", "sad"))
    acts = C.load_activities()[::4][:8]
    t = types.SimpleNamespace(id="template-x", text="I have {X} apples.", values=[1, 2, 4],
                              expected={"happy": "up"})
    sections, figures = C.run_causality(
        tiny, reg, raise_errors=True,
        sizes={"patch_pairs": 4, "n_placebo": 1, "attribution_prompts": 1,
               "shortcut_scenarios": 1, "shortcut_strengths": (0.1,), "preference_pairs": 8,
               "preference_opponents": 1, "preference_activities": acts,
               "preference_emotions": ["calm"], "templates": [t]})
    text = json.dumps(sections)
    assert "\"error\":" not in text
    assert set(sections) == {"causality", "behaviour"}
    assert {"direction_patching", "patching_map", "attribution", "logit_effects"} <= set(
        sections["causality"])
    assert {"shortcut", "preferences", "dose_response"} <= set(sections["behaviour"])
    assert "behaviour_shortcut" in figures and "causality_patching_map" in figures
    with pytest.raises(CausalityError, match="unknown sizes"):
        C.run_causality(tiny, reg, sizes={"n_pairs": 3})


def test_preferences_with_activities_in_no_prompt(tiny):
    """A random subset of pairs need not show every activity. Such an activity has no Elo and
    no readout (NaN, listed in the summary); the readout-Elo correlations are over the
    activities shown, and the rest of the experiment and its figure are still produced (it
    used to divide by a zero count and the correlation raised StatsError on the NaN)."""
    import numpy as np

    from emolens.stats import pearson

    reg = _registry(tiny)
    acts = C.load_activities()[::4][:8]              # two of each category
    res = C.preference_experiment(tiny, reg, activities=acts, n_pairs=2, n_opponents=1,
                                  steer_emotions=["calm"], seed=0, progress=False)
    s, f = res.summary, res.frame
    json.dumps(s, allow_nan=False)
    missing = s["activities_not_shown"]
    assert missing                                   # this seed leaves some activity out
    pairs = res.frames["pairs"]
    shown_ids = set(pairs.a) | set(pairs.b)
    assert set(missing) == {a.id for a in acts} - shown_ids
    assert s["n_activities_shown"] == len(shown_ids) == 8 - len(missing)
    gone = f.id.isin(missing).to_numpy()
    assert f.elo[gone].isna().all() and f.elo[~gone].notna().all()
    assert abs(f.elo[~gone].mean()) < 1e-3           # centred over the activities shown
    for e in reg.emotions:
        assert f[f"readout_{e}"][gone].isna().all() and f[f"readout_{e}"][~gone].notna().all()
        want = pearson(f[f"readout_{e}"][~gone].to_numpy(), f.elo[~gone].to_numpy(), seed=0,
                       n_resamples=1000, n_permutations=2000)
        got = s["readout_elo_correlation"][e]
        assert got["n"] == len(shown_ids) and np.isfinite(got["value"])
        assert got["value"] == pytest.approx(want.value)
    assert set(s["elo_by_category"]) == set(f.category[~gone])
    assert isinstance(preferences_figure(res), Figure)


def test_run_causality_preferences_with_activities_in_no_prompt(tiny):
    reg = _registry(tiny, ("calm", "desperate", "happy", "sad"))
    acts = C.load_activities()[::4][:8]
    sections, figures = C.run_causality(
        tiny, reg, behaviours=("preferences",),
        sizes={"patch_pairs": 2, "n_placebo": 1, "attribution_prompts": 1,
               "preference_pairs": 2, "preference_opponents": 1,
               "preference_activities": acts, "preference_emotions": ["calm"]})
    pref = sections["behaviour"]["preferences"]
    assert "error" not in pref
    assert pref["activities_not_shown"]
    json.dumps(pref, allow_nan=False)                # the NaN Elo of those is None
    assert sum(a["elo"] is None for a in pref["activities"]) == len(pref["activities_not_shown"])
    assert "behaviour_preferences" in figures


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_answer_position_logits_equal_the_full_forward_with_hooks_and_steering(request, fixture):
    """Logits at the answer position only (blocks on every position, norm + unembedding at one)
    equal the full forward's logits there, unsteered and steered, with capture hooks active."""
    from emolens.causality.ab import ab_token_sets, score_ab, steer_context
    from emolens.positions import reply_or_last
    from emolens.runtime import logits_at
    from emolens.tokens import to_inputs

    model = request.getfixturevalue(fixture)
    reg = _registry(model)
    convs = [[{"role": "user", "content": f"Choose (A) tea or (B) coffee, case {i}"}]
             for i in range(5)] + ["plain text without a reply turn"]
    batch = to_inputs(model, convs)
    pos = reply_or_last(batch)
    kw = batch.forward_kwargs()
    with torch.no_grad():
        full = model(batch.tokens, **kw)[torch.arange(len(batch)), pos]
        rows = torch.arange(len(batch))
        fast = logits_at(model, batch.tokens, rows, pos, **kw)
        assert fast.shape == full.shape
        assert torch.allclose(fast, full, atol=1e-5, rtol=1e-5)
        layer = reg.layers[0]
        with steer_context(model, reg, "calm", 0.5, layer):
            full_s = model(batch.tokens, **kw)[torch.arange(len(batch)), pos]
        with steer_context(model, reg, "calm", 0.5, layer):
            fast_s = logits_at(model, batch.tokens, rows, pos, **kw)
    assert not torch.allclose(full_s, full, atol=1e-3)  # the steering moved the logits
    assert torch.allclose(fast_s, full_s, atol=1e-5, rtol=1e-5)
    # score_ab (which scores through logits_at) captures while it scores
    site = reg.site(layer).name
    sc = score_ab(model, batch, ab_token_sets(model), capture=[site], max_tokens=64)
    at = full.float()
    letter = torch.stack([at[:, ids].logsumexp(-1) for ids in ab_token_sets(model)], -1)
    assert torch.allclose(sc.p_a, letter.softmax(-1)[:, 0], atol=1e-5)
    assert sum(a.shape[0] for a in sc.acts[site]) == len(batch)
