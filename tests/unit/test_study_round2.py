"""Study experiments of round 2 on tiny models and planted data: steering in AxBench / Tan et
al. terms, directional ablation, reply-emotion prediction, sycophancy A/B."""
from __future__ import annotations

import html
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from emolens.errors import InputError, SteeringError
from emolens.registry import EmotionRegistry
from emolens.sites import Site
from emolens.steering import metrics as M

matplotlib.use("Agg")


def _registry(model, emotions=("calm", "desperate", "happy"), *, seed=0, vectors=None):
    L, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(L, len(emotions), d, generator=g) if vectors is None else vectors
    sites = [Site(layer, f"blocks.{layer}.hook_resid_post") for layer in range(L)]
    return EmotionRegistry(dirs, list(emotions), sites, torch.full((L,), 4.0),
                           default_layer=L - 2)


# ------------------------------------------------------------------------------ ROC-AUC
def test_roc_auc_matches_pair_counting_and_handles_ties():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (40,), generator=g).double()
    pos = torch.rand(40, generator=g) > 0.6
    sp, sn = s[pos], s[~pos]
    ref = float(((sp[:, None] > sn).double() + 0.5 * (sp[:, None] == sn).double()).mean())
    assert M.roc_auc(s, pos) == pytest.approx(ref, abs=1e-12)
    assert M.roc_auc(torch.arange(6.0), torch.tensor([0, 0, 0, 1, 1, 1]).bool()) == 1.0
    lo, hi = M.auc_interval(s, pos, n_resamples=300)
    assert lo <= ref <= hi
    with pytest.raises(InputError, match="positives and negatives"):
        M.roc_auc(s, torch.ones(40, dtype=torch.bool))


def _stored_texts(marker: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    words = ["the", "a", "blue", "cat", "runs", "today", "slowly", "under", "moon", "tea"]
    return [" ".join(rng.choice(words, 6)) + f" {marker * 24}" for _ in range(n)]


def test_detection_auc_finds_a_planted_direction_and_a_null_stays_null(tiny):
    from emolens.readout.readout import read_emotions

    layer = 2
    a_tr, b_tr = _stored_texts("!", 12, 0), _stored_texts("?", 12, 1)
    probe = _registry(tiny, ("x",))
    # planted: the difference of the two groups' mean pooled residuals at the layer
    site = probe.site(layer)
    from emolens.tokens import to_inputs

    acts = {}
    for name, texts in (("a", a_tr), ("b", b_tr)):
        b = to_inputs(tiny, texts)
        with torch.no_grad():
            _, cache = tiny.run_with_cache(b.tokens, names_filter=[site.name],
                                           **b.forward_kwargs())
        m = b.content_mask.float()[..., None]
        acts[name] = ((cache[site.name] * m).sum(1) / m.sum(1)).mean(0)
    v = acts["a"] - acts["b"]
    dirs = torch.randn(tiny.cfg.n_layers, 2, tiny.cfg.d_model)
    dirs[layer, 0], dirs[layer, 1] = v, -v
    reg = _registry(tiny, ("bang", "query"), vectors=dirs)
    a_te, b_te = _stored_texts("!", 10, 2), _stored_texts("?", 10, 3)
    res = M.detection_auc(tiny, reg, a_te + b_te, ["bang"] * 10 + ["query"] * 10, layer=layer,
                          n_resamples=300)
    assert res.auc["bang"] > 0.95 and res.ci["bang"][0] > 0.8
    assert res.auc["query"] > 0.95
    # the same pooled scores by hand
    pooled = read_emotions(tiny, reg, a_te + b_te, layer=layer).pooled()
    assert res.auc["bang"] == pytest.approx(
        M.roc_auc(pooled[:, 0], torch.tensor([True] * 10 + [False] * 10)))
    # null: labels unrelated to the text
    rng = np.random.default_rng(5)
    labels = list(rng.permutation(["bang"] * 10 + ["query"] * 10))
    null = M.detection_auc(tiny, reg, a_te + b_te, labels, layer=layer, n_resamples=300)
    assert null.ci["bang"][0] < 0.5 < null.ci["bang"][1]
    json.dumps(res.to_dict())
    assert "ROC-AUC" in res.statement and "<img" in res._repr_html_()
    with pytest.raises(InputError, match="labels"):
        M.detection_auc(tiny, reg, a_te)


def test_detection_auc_reads_the_test_split_unless_told():
    """Default texts: the corpus's test stories (the default layer was chosen on dev); dev and
    validation (both) on request; the count and the source say which."""
    from emolens.stimuli.corpus import load_corpus
    from emolens.testing import tiny_model

    tiny = tiny_model(n_ctx=1024)  # the bundled stories run to about 600 tokens
    corpus = load_corpus()
    emos = ("happy", "afraid")
    reg = _registry(tiny, emos, vectors=torch.randn(tiny.cfg.n_layers, 2, tiny.cfg.d_model))
    n = {sp: len(corpus.stories(list(emos), split=sp)) for sp in ("dev", "test")}
    assert n["dev"] > 0 and n["test"] > 0 and n["dev"] != n["test"]
    got = {sp: M.detection_auc(tiny, reg, split=sp, n_resamples=20) for sp in ("dev", "validation")}
    got["test"] = M.detection_auc(tiny, reg, n_resamples=20)  # the default
    assert got["test"].n_texts == n["test"] and got["dev"].n_texts == n["dev"]
    assert got["validation"].n_texts == n["dev"] + n["test"]
    assert got["test"].source.startswith("test stories") and "dev stories" in got["dev"].source
    with pytest.raises(InputError, match="split='train'"):
        M.detection_auc(tiny, reg, split="train")


# ------------------------------------------------------------------------------ steering score
def _planted_frame(n_prompts=16, strengths=(0.0, 0.1, 0.2, 0.4), *, effect=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        for s in strengths:
            # planted: the concept reading rises with strength for 14 of 16 prompts; fluency
            # collapses at the largest strength
            slope = (4.0 if i >= 2 else -1.0) if effect else rng.normal()
            share = -2.0 + slope * s + (0.02 * rng.normal() if effect else 0.0)
            rank = 1 if share > -1.5 else (3 if share > -1.9 else 6)
            rows.append({"prompt_index": i, "strength": s, "concept_share": share,
                         "concept_rank": rank, "relevance_pmi": 0.4 + 0.01 * rng.normal(),
                         "perplexity": 3.0 * (6 if s >= 0.4 else 1), "distinct_bigrams": 0.9,
                         "n_tokens": 20})
    return pd.DataFrame(rows)


def test_steering_score_rule_and_best_strength_on_planted_judgements():
    scored = M.score_generations(_planted_frame())
    # harmonic mean per generation, zero when any part is zero
    row = scored[(scored.strength == 0.2) & (scored.prompt_index == 5)].iloc[0]
    c, r, f = row.concept_score, row.relevance_score, row.fluency_score
    assert (c, r, f) == (2.0, 2.0, 2.0) and row.score == 2.0
    assert (scored[scored.strength == 0.4].fluency_score == 0).all()
    assert (scored[scored.strength == 0.4].score == 0).all()
    assert M.harmonic_score(np.array([1.0]), np.array([2.0]), np.array([2.0]))[0] == \
        pytest.approx(3 / (1 + 0.5 + 0.5))
    summ = M.summarise_scores(scored)
    assert summ.best_strength == 0.2 and summ.best_in_sample == 0.2
    assert summ.anti_steerable.value == pytest.approx(2 / 16)
    assert summ.anti_steerable.p_value < 0.01
    assert summ.slope.low > 0


def test_anti_steerable_null_stays_near_half():
    summ = M.summarise_scores(M.score_generations(_planted_frame(n_prompts=40, effect=False,
                                                                 seed=3)))
    a = summ.anti_steerable
    assert a.low < 0.5 < a.high and a.p_value > 0.05
    assert summ.slope.low < 0 < summ.slope.high


def test_score_needs_strength_zero():
    df = _planted_frame()
    with pytest.raises(SteeringError, match="strength 0"):
        M.score_generations(df[df.strength > 0])


def test_steering_score_end_to_end_on_a_tiny_model(tiny):
    reg = _registry(tiny)
    prompts = [[{"role": "user", "content": t}] for t in ("Say hi", "Count to 3", "Name a fruit")]
    res = M.steering_score(tiny, reg, "calm", [0.0, 0.5], prompts, max_new_tokens=4,
                           words=["calm", "happy", "desperate"], judge_control=False)
    f = res.frame
    assert len(f) == 6 and set(f.strength) == {0.0, 0.5}
    assert set(res.placebo_frame.strength) == {0.0, 0.5}
    # strength-0 rows are the same unsteered generations for the direction and the placebo
    assert list(f[f.strength == 0].text) == list(res.placebo_frame[
        res.placebo_frame.strength == 0].text)
    assert ((f.concept_rank >= 1) & (f.concept_rank <= 3)).all()
    assert np.allclose(f.score, M.harmonic_score(f.concept_score, f.relevance_score,
                                                 f.fluency_score))
    json.dumps(res.to_dict())
    assert "harmonic mean" in res.statement and "<img" in res._repr_html_()
    with pytest.raises(SteeringError, match="lack 0"):
        M.steering_score(tiny, reg, "calm", [0.1, 0.2], prompts)


def test_steering_score_concept_judge_under_another_model(tiny, tiny_llama):
    from emolens.steering.judges import question_context, word_logprobs

    reg = _registry(tiny)
    prompts = [[{"role": "user", "content": t}] for t in ("Say hi", "Count to 3")]
    words = ["calm", "happy", "desperate"]
    kw = {"max_new_tokens": 4, "words": words, "placebo": False, "judge_control": False}
    own = M.steering_score(tiny, reg, "calm", [0.0, 0.5], prompts, **kw)
    other = M.steering_score(tiny, reg, "calm", [0.0, 0.5], prompts, concept_model=tiny_llama,
                             **kw)
    f, g = own.frame, other.frame
    assert list(f.text) == list(g.text)  # the same generations ...
    assert np.allclose(f.relevance_pmi, g.relevance_pmi) and np.allclose(f.perplexity,
                                                                         g.perplexity)
    # ... their concept read under the judge: the word share after the judge's own question
    ctx = [question_context(tiny_llama, prompts[int(i)], t)
           for i, t in zip(g.prompt_index, g.text)]
    lp = word_logprobs(tiny_llama, ctx, words)
    share = lp[:, 0] - torch.logsumexp(lp, -1)
    assert np.allclose(g.concept_share, share.numpy(), atol=1e-4)
    assert not np.allclose(f.concept_share, g.concept_share, atol=1e-3)
    assert other.settings["concept_model"] != own.settings["concept_model"]
    assert "unsteered model's emotion-word reading (concept)" in own.statement
    assert "emotion-word reading (concept)" in other.statement
    assert "unsteered model's emotion-word reading (concept)" not in other.statement
    with pytest.raises(Exception, match="not-a-model"):
        M.steering_score(tiny, reg, "calm", [0.0, 0.5], prompts, concept_model="not-a-model",
                         **kw)


def test_concept_judge_recall_on_planted_judges(tiny, monkeypatch):
    from emolens.steering import judges
    from emolens.stimuli.corpus import load_corpus

    words = ["afraid", "calm", "happy", "sad"]
    recs = load_corpus().stories(words, split="validation")
    truth = [words.index(r.emotion) for r in recs]
    calls = []

    def seeing(model, contexts, cand, **kw):  # a judge that sees every story's emotion
        calls.append(contexts)
        lp = torch.full((len(contexts), len(cand)), -5.0)
        lp[torch.arange(len(contexts)), torch.tensor(truth)] = -0.1
        return lp

    monkeypatch.setattr(judges, "word_logprobs", seeing)
    rec = M.concept_judge_recall(tiny, words, judge="planted")
    assert rec.top1.value == 1.0 and rec.top3.value == 1.0 and rec.top1.n == len(recs)
    assert rec.top1.p_value < 1e-6  # 1/4 chance per story
    assert sum(v["n"] for v in rec.per_emotion.values()) == len(recs)
    assert all(v["top1"] == v["n"] for v in rec.per_emotion.values())
    # the judge reads each story as the assistant's reply, after the judge question
    assert len(calls[0]) == len(recs) and recs[0].text in calls[0][0][0]

    def blind(model, contexts, cand, **kw):  # never ranks 'afraid' stories' emotion high
        lp = torch.randn(len(contexts), len(cand), generator=torch.Generator().manual_seed(0))
        lp[:, 0] = -50.0
        return lp

    monkeypatch.setattr(judges, "word_logprobs", blind)
    rec = M.concept_judge_recall(tiny, words, judge="blind")
    assert rec.per_emotion["afraid"]["top3"] == 0
    assert rec.top1.p_value > 0.01  # about chance overall
    assert "Positive control of the concept judge (blind)" in rec.statement
    json.dumps(rec.to_dict())
    page = rec._repr_html_()
    assert "<table" in page and "<td>afraid</td>" in page
    assert html.escape(rec.statement) in page
    assert repr(rec).startswith("JudgeRecall('blind', top1=")
    with pytest.raises(InputError, match="at least two"):
        M.concept_judge_recall(tiny, ["calm"])
    with pytest.raises(InputError, match="split='train2'"):
        M.concept_judge_recall(tiny, words, split="train2")


def test_steering_score_reports_its_judges_positive_control():
    from emolens.testing import tiny_model

    m = tiny_model(arch="native", n_layers=2, d_model=32, n_ctx=4096, seed=0)
    reg = _registry(m)
    prompts = [[{"role": "user", "content": t}] for t in ("Say hi", "Count to 3")]
    res = M.steering_score(m, reg, "calm", [0.0, 0.5], prompts, max_new_tokens=3,
                           words=["calm", "happy", "desperate"], placebo=False)
    rec = res.settings["concept_judge_recall"]
    direct = M.concept_judge_recall(m, ["calm", "happy", "desperate"], judge=rec["judge"])
    assert rec["top1"]["value"] == pytest.approx(direct.top1.value)
    assert rec["per_emotion"] == direct.per_emotion
    n_calm = rec["per_emotion"]["calm"]["n"]
    assert f"For 'calm' itself: top 3 in {n_calm} of {n_calm} stories." in res.statement
    assert "Positive control of the concept judge" in res.to_dict()["statement"]


def test_continuation_logprob_matches_a_manual_forward(tiny):
    pre, cont = [1, 70, 71, 72], [73, 74]
    got = M.continuation_logprob(tiny, [pre, pre[:2]], [cont, cont])
    with torch.no_grad():
        lp = tiny(torch.tensor([pre + cont]), return_type="logits")[0].log_softmax(-1)
    ref = float((lp[3, 73] + lp[4, 74]) / 2)
    assert got[0] == pytest.approx(ref, abs=1e-4)
    assert got[1] != pytest.approx(ref, abs=1e-4)


# ------------------------------------------------------------------------------ ablation
def test_choose_layer_respects_the_kl_limit():
    from emolens.causality.ablation import choose_layer

    layers, change, kl = [0, 1, 2, 3], [-0.1, -0.9, -0.5, 0.3], [0.01, 0.5, 0.05, 0.02]
    assert choose_layer(layers, change, kl) == 2          # layer 1 changes more but KL >= 0.1
    assert choose_layer(layers, change, kl, expect="increase") == 3
    assert choose_layer(layers, change, kl, kl_limit=1.0) == 1
    assert choose_layer(layers, change, kl, kl_limit=0.001) is None


def test_ablation_scan_finds_a_planted_direction(tiny):
    from emolens.causality.ablation import ablation_scan

    L = int(tiny.cfg.n_layers)
    name = f"blocks.{L - 1}.hook_resid_post"
    toks = tiny.to_tokens(["The cat sat", "A dog ran", "It is lat"])
    with torch.no_grad():
        _, cache = tiny.run_with_cache(toks, names_filter=[name])
    planted = cache[name][:, -1].mean(0)
    planted = planted / planted.norm()      # the direction the last residual mostly points along

    def proj_last(model):
        store = {}

        def grab(x, hook):
            store["x"] = x.detach()
        with model.hooks(fwd_hooks=[(name, grab)]):
            model(toks, return_type="logits")
        return store["x"][:, -1] @ planted

    dirs = torch.randn(L, 2, tiny.cfg.d_model)
    dirs[:, 0] = planted
    reg = _registry(tiny, ("planted", "other"), vectors=dirs)
    res = ablation_scan(tiny, reg, "planted", metric=proj_last, metric_name="projection",
                        layers=[1, 3], neutral=["Some neutral text here."],
                        kl_limit=10.0)
    assert res.baseline > 1.0
    for e in res.change:    # ablated at every layer: the component is exactly gone
        assert e.value == pytest.approx(-res.baseline, abs=1e-3)
    assert max(abs(e.value) for e in res.placebo_change) < 0.5 * res.baseline
    assert res.chosen_layer is not None and res.kl[res.layers.index(res.chosen_layer)] < 10.0
    json.dumps(res.to_dict())
    assert "Ablating" in res.statement and "<img" in res._repr_html_()
    # a tight limit leaves no layer
    tight = ablation_scan(tiny, reg, "planted", metric=proj_last, layers=[3],
                          neutral=["Some neutral text here."], kl_limit=1e-9, placebo=False)
    assert tight.chosen_layer is None and "No layer" in tight.statement


def test_ablation_scan_default_metric_runs_and_null_direction_is_small(tiny):
    from emolens.causality.ablation import ablation_scan

    reg = _registry(tiny)
    res = ablation_scan(tiny, reg, "calm", prompts=["I sat by the lake.", "The room was quiet."],
                        layers=[1, 2], mode="at_layer", neutral=["Plain words."])
    assert len(res.change) == 2 and len(res.placebo_change) == 2 and res.n_prompts == 2
    with pytest.raises(Exception, match="mode"):
        ablation_scan(tiny, reg, "calm", mode="everywhere")


def _massive_tiny(coordinate=5, value=1e4):
    """A tiny model whose residual stream carries one massive coordinate from block 0 on (as
    Gemma-3's does): every token's embedding carries ``value`` there."""
    from emolens.testing import tiny_model

    m = tiny_model(arch="native", n_layers=4, d_model=64, seed=0)
    with torch.no_grad():
        m.embed.W_E[:, coordinate] += value
    return m


def test_massive_coordinates_finds_a_planted_one_and_none_in_a_plain_model(tiny):
    from emolens.causality.ablation import massive_coordinates

    texts = ["Some neutral text here.", "The train left at noon."]
    assert massive_coordinates(tiny, texts) == []
    assert massive_coordinates(_massive_tiny(5), texts) == [5]
    assert massive_coordinates(_massive_tiny(17, 2000.0), texts, layers=[2]) == [17]
    # the two bounds: 150 is above 100 but not 1000x this stream's median |x_j| (about 0.3)
    assert massive_coordinates(_massive_tiny(17, 150.0), texts) == []
    assert massive_coordinates(_massive_tiny(17, 150.0), texts, ratio=100.0) == [17]
    # and 60 is below the absolute bound of 100, however far above the median
    assert massive_coordinates(_massive_tiny(17, 60.0), texts, ratio=10.0) == []
    with pytest.raises(Exception, match="layers must be in 0..3"):
        massive_coordinates(tiny, texts, layers=[4])


def test_ablation_excluding_the_massive_coordinate_removes_the_placebos_damage():
    from emolens.causality.ablation import CausalityError, ablation_scan

    m = _massive_tiny(5)
    reg = _registry(m)
    toks = m.to_tokens(["I sat by the lake.", "The room was quiet."])
    last = f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"
    others = [i for i in range(64) if i != 5]

    def rest_norm(model):  # the size of the stream outside the massive coordinate, per prompt
        store = {}

        def grab(x, hook):
            store["x"] = x.detach()
        with model.hooks(fwd_hooks=[(last, grab)]):
            model(toks, return_type="logits")
        return store["x"][:, -1, others].norm(dim=-1)

    kw = {"metric": rest_norm, "layers": [1, 2],
          "neutral": ["Some neutral text here.", "The train left at noon."]}
    plain = ablation_scan(m, reg, "calm", exclude_coordinates=None, **kw)
    kept = ablation_scan(m, reg, "calm", **kw)  # the default: "massive"
    # projecting out a random unit direction r moves every coordinate by (x . r) r_i, and
    # x . r carries the massive coordinate's weight (r_5 x 10^4): the rest of the stream is
    # thrown about; with the coordinate left out of r it moves by ordinary amounts
    base = plain.baseline
    assert min(abs(e.value) for e in plain.placebo_change) > 10 * base
    assert max(abs(e.value) for e in kept.placebo_change) < base
    assert kept.settings["excluded_coordinates"] == [5]
    for layer, cos in zip(kw["layers"], kept.settings["direction_kept_cosine"]):
        v = reg.vector("calm", layer).float()
        v = v / v.norm()
        assert cos == pytest.approx(float((1 - v[5] ** 2).sqrt()), abs=1e-5)
    assert "Coordinates [5] were left out" in kept.statement
    assert plain.settings["excluded_coordinates"] == [] and "left out" not in plain.statement
    explicit = ablation_scan(m, reg, "calm", exclude_coordinates=[5], **kw)
    assert [e.value for e in explicit.placebo_change] == pytest.approx(
        [e.value for e in kept.placebo_change], rel=1e-5)
    with pytest.raises(CausalityError, match="'massive'"):
        ablation_scan(m, reg, "calm", exclude_coordinates="outliers", **kw)
    with pytest.raises(CausalityError, match=r"\[64\] are outside 0..63"):
        ablation_scan(m, reg, "calm", exclude_coordinates=[3, 64], **kw)


# ------------------------------------------------------------------------------ reply prediction
def test_compare_predictors_finds_the_planted_predictor_and_a_null_stays_null():
    from emolens.readout.reply_prediction import compare_predictors

    rng = np.random.default_rng(0)
    target = rng.normal(size=(30, 5)) + rng.normal(size=(1, 5)) * 10   # offsets per emotion
    good = target + 0.3 * rng.normal(size=target.shape) + 100          # planted: tracks it
    null = np.random.default_rng(4).normal(size=target.shape)  # independent of the target
    out = compare_predictors(target, {"good": good, "null": null}, n_resamples=300,
                             n_permutations=300)
    assert out["good"].value > 0.9 and out["good"].low > 0.8 and out["good"].p_value < 0.01
    assert out["null"].low < 0 < out["null"].high and out["null"].p_value > 0.05
    assert out["difference"].low > 0.5
    # centring per emotion: a predictor that only knows each emotion's offset predicts nothing
    offsets = np.repeat(target.mean(0, keepdims=True), 30, 0) + 1e-9 * rng.normal(size=(30, 5))
    assert abs(compare_predictors(target, {"o": offsets}, n_resamples=50,
                                  n_permutations=50)["o"].value) < 0.5


def test_user_last_positions_point_at_the_users_last_word(tiny):
    from emolens.readout.reply_prediction import user_last_positions
    from emolens.tokens import to_inputs

    convs = [[{"role": "user", "content": "Hello there friend"}],
             [{"role": "user", "content": "Short!"}]]
    pos = user_last_positions(tiny, convs)
    b = to_inputs(tiny, convs)
    for i, c in enumerate(convs):
        assert tiny.tokenizer.decode(b.tokens[i, pos[i]]) == c[0]["content"][-1]
        assert tiny.tokenizer.decode(b.tokens[i, pos[i] + 1]) == "<|im_end|>"
        assert int(b.reply_pos[i]) > int(pos[i])


def test_reply_emotion_prediction_end_to_end(tiny):
    from emolens.readout.reply_prediction import reply_emotion_prediction

    reg = _registry(tiny)
    convs = [[{"role": "user", "content": t}] for t in
             ("I lost my keys", "We won the cup!", "The exam is today", "My cat is sick")]
    res = reply_emotion_prediction(tiny, reg, convs, layers=[1, 2], reply_layer=2,
                                   max_new_tokens=5, n_resamples=100)
    assert set(res.by_layer) == {1, 2} and res.n_prompts == 4
    assert res.at()["reply_open"] is not None
    json.dumps(res.to_dict())
    assert "reply-opening" in res._repr_html_() and "<img" in res._repr_html_()
    with pytest.raises(InputError, match="reply_layer"):
        reply_emotion_prediction(tiny, reg, convs, layers=[1], reply_layer=2)


# ------------------------------------------------------------------------------ sycophancy
def test_bundled_sycophancy_items_load():
    from emolens.causality.sycophancy import load_sycophancy_items

    items = load_sycophancy_items()
    assert len(items) == 16
    assert sum(i.kind == "wrong_claim" for i in items) == 8
    assert len({i.id for i in items}) == 16


def test_bad_sycophancy_items_raise(tmp_path):
    from emolens.causality._common import CausalityError
    from emolens.causality.sycophancy import load_sycophancy_items

    rec = {"id": "x", "kind": "opinion", "user": "u", "sycophantic": "a", "balanced": "b",
           "harsh": "c"}
    p = tmp_path / "items.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(CausalityError, match="kind 'opinion'"):
        load_sycophancy_items(p)
    p.write_text(json.dumps({**rec, "kind": "weak_work", "harsh": "a"}) + "\n")
    with pytest.raises(CausalityError, match="identical"):
        load_sycophancy_items(p)


def test_order_averaging_cancels_a_letter_bias_exactly():
    from emolens.causality.sycophancy import order_averaged_logodds

    pref, bias = np.array([0.7, -1.2]), 2.0
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    p_a = np.array([sig(pref[0] + bias), sig(-pref[0] + bias), sig(pref[1] + bias),
                    sig(-pref[1] + bias)])
    got = order_averaged_logodds(p_a, np.array([True, False, True, False]),
                                 np.array(["a", "a", "b", "b"]))
    assert np.allclose(got.to_numpy(), pref, atol=1e-9)


def test_sycophancy_summary_finds_a_planted_shift_and_the_placebo_stays_null():
    from emolens.causality.sycophancy import summarise

    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        base = rng.normal()
        for meas in ("sycophancy", "harshness"):
            vals = {"unsteered": base, "+happy": base + (1.0 if meas == "sycophancy" else 0.0)
                    + 0.1 * rng.normal(), "-happy": base + 0.1 * rng.normal()}
            vals.update({f"random:{k}": base + 0.1 * rng.normal() for k in range(3)})
            rows += [{"condition": c, "measure": meas, "item": f"i{i}", "logodds": v}
                     for c, v in vals.items()]
    effects, ests = summarise(pd.DataFrame(rows))
    up = ests[("+happy", "sycophancy", "placebo")]
    assert up.value == pytest.approx(1.0, abs=0.1) and up.low > 0.8 and up.p_value < 0.01
    assert ests[("+happy", "harshness", "placebo")].excludes(0.0) is False
    assert ests[("random", "sycophancy", "unsteered")].excludes(0.0) is False
    assert ests[("-happy", "harshness", "unsteered")].excludes(0.0) is False


def test_sycophancy_experiment_end_to_end_letter_bias_is_not_sycophancy(tiny):
    from emolens.causality.behaviour import ab_token_sets
    from emolens.causality.sycophancy import SycophancyItem, sycophancy_experiment

    L = int(tiny.cfg.n_layers)
    ids = ab_token_sets(tiny)
    w_u = tiny.W_U.detach().float()
    letter = w_u[:, ids[0]].mean(1) - w_u[:, ids[1]].mean(1)   # planted: favours letter A
    dirs = torch.randn(L, 2, tiny.cfg.d_model)
    dirs[:, 0] = letter
    reg = _registry(tiny, ("happy", "angry"), vectors=dirs)
    items = [SycophancyItem(f"i{k}", "wrong_claim", f"Is {k}+{k}={k}?", "Yes.", "No.", "No, duh.")
             for k in range(3)]
    res = sycophancy_experiment(tiny, reg, positive=("happy",), negative=("angry",),
                                strength=2.0, layer=L - 1, items=items, n_random=1)
    f = res.frame
    raw = (np.log(f[f.condition == "+happy"].p_a.to_numpy())
           - np.log(f[f.condition == "unsteered"].p_a.to_numpy()))
    assert raw.mean() > 0.05                             # P(A) rises in every prompt
    shift = abs(res.effect("+happy", "sycophancy").value)
    assert shift < 0.2 * float(np.abs(raw).mean())       # but both orders cancel it
    assert len(f) == 3 * 2 * 2 * (1 + 1 + 1 + 1 + 1)
    json.dumps(res.to_dict())
    assert "random directions" in res.statement and "<img" in res._repr_html_()
