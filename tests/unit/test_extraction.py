"""Streaming extraction: exact parity with a direct computation, merging, padding invariance,
methods, validation, and errors."""
from __future__ import annotations

import pytest
import torch

from emolens.errors import ExtractionError, InputError
from emolens.extraction import (
    ClassMeanAccumulator,
    ExtractionData,
    MomentAccumulator,
    extract_emotions,
    get_method,
    position_mask,
    register_method,
)
from emolens.extraction.methods import MeanDiff, neutral_projector
from emolens.sites import Site
from emolens.tokens import to_inputs

TEXTS = {
    "sunny": ["the sun is warm and bright today", "we laughed in the sunny park",
              "bright light on a summer day", "a warm breeze and clear sky"],
    "stormy": ["thunder cracked over the dark sea", "the storm tore the roof away",
               "cold rain hammered the windows", "lightning split the old oak"],
    "quiet": ["the library was silent", "a still pond at dawn", "snow fell without a sound"],
}


def _manual_class_means(model, texts_by_class, layer, policy="content"):
    """Reference: run_with_cache one text at a time, mean over positions, then over texts."""
    name = f"blocks.{layer}.hook_resid_post"
    means = []
    for texts in texts_by_class.values():
        per_text = []
        for t in texts:
            b = to_inputs(model, [t])
            _, cache = model.run_with_cache(b.tokens, names_filter=name)
            m = position_mask(b, policy)[0]
            per_text.append(cache[name][0][m].mean(0))
        means.append(torch.stack(per_text).mean(0))
    return torch.stack(means)


def test_mean_diff_equals_direct_computation(tiny):
    reg = extract_emotions(tiny, TEXTS, layers=[1, 3], batch_size=3, progress=False,
                           neutral=[])
    for layer in (1, 3):
        cm = _manual_class_means(tiny, TEXTS, layer)
        expected = cm - cm.mean(0, keepdim=True)
        expected = expected / expected.norm(dim=-1, keepdim=True)
        assert torch.allclose(reg.matrix(layer), expected, atol=1e-5)
    assert reg.emotions == list(TEXTS)
    assert reg.metadata["positions"] == "content"
    assert reg.metadata["method"]["name"] == "mean_diff"


def test_mean_norm_is_mean_residual_norm_over_content_tokens(tiny):
    reg = extract_emotions(tiny, TEXTS, layers=[2], progress=False, neutral=[])
    name = "blocks.2.hook_resid_post"
    norms = []
    for texts in TEXTS.values():
        for t in texts:
            b = to_inputs(tiny, [t])
            _, cache = tiny.run_with_cache(b.tokens, names_filter=name)
            norms.append(cache[name][0][b.content_mask[0]].norm(dim=-1))
    assert reg.mean_norm(2) == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_one_at_a_time(tiny, side):
    one = extract_emotions(tiny, TEXTS, layers=[0, 2], batch_size=1, progress=False, neutral=[])
    many = extract_emotions(tiny, TEXTS, layers=[0, 2], batch_size=5, progress=False, neutral=[],
                            padding_side=side)
    assert torch.allclose(one.tensor(), many.tensor(), atol=1e-4)
    assert torch.allclose(one.mean_norms, many.mean_norms, rtol=1e-4)


def test_accumulators_merge_to_the_whole():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(6, 5, 8, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    whole, a, b = (ClassMeanAccumulator(1, 3, 8) for _ in range(3))
    whole.add(0, act, mask, labels, count_texts=True)
    a.add(0, act[:3], mask[:3], labels[:3], count_texts=True)
    b.add(0, act[3:], mask[3:], labels[3:], count_texts=True)
    merged = a.merge(b)
    assert torch.allclose(merged.class_means(), whole.class_means())
    assert torch.allclose(merged.mean_norm(), whole.mean_norm())
    mw, ma, mb = (MomentAccumulator(1, 8) for _ in range(3))
    mw.add(0, act, mask)
    ma.add(0, act[:2], mask[:2])
    mb.add(0, act[2:], mask[2:])
    assert torch.allclose(ma.merge(mb).covariance(), mw.covariance())
    x = act[mask].double()
    assert torch.allclose(mw.covariance()[0], torch.cov(x.T, correction=0), atol=1e-10)


def test_planted_direction_is_recovered_and_neutral_axes_removed():
    g = torch.Generator().manual_seed(1)
    d, n = 32, 200
    planted = torch.nn.functional.normalize(torch.randn(3, d, generator=g), dim=-1)
    nuisance = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    acc = ClassMeanAccumulator(1, 3, d)
    labels = torch.arange(n) % 3
    # every text carries its class's planted vector plus a large nuisance component
    act = (planted[labels] * 2.0 + 30.0 * torch.randn(n, 1, generator=g) * nuisance
           + 0.3 * torch.randn(n, d, generator=g))[:, None, :]
    acc.add(0, act, torch.ones(n, 1, dtype=torch.bool), labels, count_texts=True)
    neutral = MomentAccumulator(1, d)
    neutral_act = (30.0 * torch.randn(500, 1, generator=g) * nuisance
                   + 0.3 * torch.randn(500, d, generator=g))[:, None, :]
    neutral.add(0, neutral_act, torch.ones(500, 1, dtype=torch.bool))
    data = ExtractionData([Site(0, "blocks.0.hook_resid_post")], ["a", "b", "c"],
                          acc.class_means(), acc.counts, neutral.covariance())
    raw = MeanDiff(neutral_variance=0.0).fit(data)[0]
    clean_method = MeanDiff(neutral_variance=0.5)
    clean = clean_method.fit(data)[0]
    target = planted - planted.mean(0)
    target = target - (target @ nuisance)[:, None] * nuisance  # what survives denoising
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)  # noqa: E731
    assert (cos(clean, target) > 0.98).all()
    assert (cos(clean, nuisance[None]).abs() < 1e-2).all()  # the estimated axis, not exact
    assert clean_method.removed_ == [1]
    assert cos(raw, nuisance[None]).abs().max() > cos(clean, nuisance[None]).abs().max()


def test_neutral_projector_explains_requested_share():
    cov = torch.diag(torch.tensor([5.0, 3.0, 1.0, 1.0]))
    u, k = neutral_projector(cov, 0.5)
    assert k == 1 and torch.allclose(u[:, 0].abs(), torch.tensor([1.0, 0, 0, 0], dtype=u.dtype))
    _, k = neutral_projector(cov, 0.7)
    assert k == 2


@pytest.mark.parametrize("method", ["pca_pairs", "probe"])
def test_other_methods_run_end_to_end_with_unit_directions(tiny, method):
    params = {"steps": 200} if method == "probe" else {}
    reg = extract_emotions(tiny, TEXTS, layers=[3], method=method, progress=False, neutral=[],
                           **params)
    assert torch.allclose(reg.matrix(3).norm(dim=-1), torch.ones(3), atol=1e-5)
    assert reg.metadata["method"]["name"] == method


def _planted_features(n_per_class=30, d=16, noise=0.3, seed=0):
    """Per-text features: class c sits at 2 * e_c plus isotropic noise (a planted separation)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    offsets = torch.zeros(3, d)
    offsets[torch.arange(3), torch.arange(3)] = 2.0
    feats = offsets[labels] + noise * torch.randn(len(labels), d, generator=g)
    return feats[:, None].double(), labels, offsets


@pytest.mark.parametrize("method", ["mean_diff", "pca_pairs", "probe"])
def test_every_method_finds_a_planted_separation(method):
    from emolens.scoring import score

    feats, labels, offsets = _planted_features()
    cm = torch.stack([feats[labels == c].mean(0) for c in range(3)], 1)  # [site, cls, d]
    data = ExtractionData([Site(0, "blocks.0.hook_resid_post")], ["a", "b", "c"], cm,
                          torch.bincount(labels).double(), None, feats, labels)
    dirs = get_method(method).fit(data)[0].float()
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    planted = offsets - offsets.mean(0)
    planted = planted / planted.norm(dim=-1, keepdim=True)
    cos = (dirs * planted).sum(-1)
    assert (cos > 0.8).all(), (method, cos)
    # held-out texts from the same planted classes are classified by the one scoring rule
    test_feats, test_labels, _ = _planted_features(seed=1)
    pred = score(test_feats[:, 0].float(), dirs, cm[0].mean(0).float()).argmax(-1)
    assert (pred == test_labels).double().mean() > 0.9


def test_the_same_methods_find_nothing_in_pure_noise():
    from emolens.scoring import score

    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3).repeat_interleave(30)
    feats = torch.randn(len(labels), 1, 16, generator=g).double()
    cm = torch.stack([feats[labels == c].mean(0) for c in range(3)], 1)
    data = ExtractionData([Site(0, "blocks.0.hook_resid_post")], ["a", "b", "c"], cm,
                          torch.bincount(labels).double(), None, feats, labels)
    dirs = get_method("mean_diff").fit(data)[0].float()
    test = torch.randn(300, 16, generator=g)
    test_labels = torch.arange(3).repeat_interleave(100)
    acc = float((score(test, dirs, cm[0].mean(0).float()).argmax(-1) == test_labels)
                .double().mean())
    assert 0.2 < acc < 0.47, acc  # chance is 1/3


def test_plugin_method_by_name(tiny):
    class Constant:
        name = "constant"
        needs_features = False

        def fit(self, data):
            out = torch.zeros_like(data.class_means).float()
            out[..., 0] = torch.arange(1, len(data.classes) + 1, dtype=torch.float32)
            return out

        def params(self):
            return {}

    register_method("constant", Constant)
    reg = extract_emotions(tiny, TEXTS, layers=[1], method="constant", progress=False, neutral=[])
    assert torch.equal(reg.matrix(1)[:, 0], torch.ones(3))
    with pytest.raises(ExtractionError, match="unknown extraction method 'mean_dif'.*mean_diff"):
        get_method("mean_dif")


def test_position_policies(tiny):
    b = to_inputs(tiny, ["abcdef", "abc"], padding_side="left")
    assert position_mask(b, "all").sum().item() == 7 + 4
    assert position_mask(b, "content").sum().item() == 6 + 3
    last = position_mask(b, "last")
    assert last.sum().item() == 2 and last[:, -1].all()
    m = position_mask(b, "from:3")
    assert m.sum(-1).tolist() == [4, 1]
    with pytest.raises(InputError, match="needs chat input"):
        position_mask(b, "reply")
    with pytest.raises(InputError, match="unknown position policy"):
        position_mask(b, "from:0")


def test_validation_accuracy_and_shuffled_control(tiny):
    class Rec:
        def __init__(self, text):
            self.text = text

    class Small:
        name, content_hash, version = "small", "h", "1"
        emotions = ["sunny", "stormy"]
        neutral: list = []

        def stories(self, emotion, split=None):
            texts = TEXTS[emotion]
            # dev: the held-out text; test: two texts of their own (here training ones, so the
            # two splits' figures differ in count and can be told apart)
            return [Rec(t) for t in {"train": texts[:3], "dev": texts[3:],
                                     "test": texts[1:3]}[split]]

    reg = extract_emotions(tiny, Small(), layers=[0, 1], progress=False)
    val = reg.validation
    assert val["chance"] == 0.5 and val["n_texts"] == 2 and val["split"] == "dev"
    test = val["test"]
    assert test["split"] == "test" and test["n_texts"] == 4
    assert set(test["accuracy_by_layer"]) == {"0", "1"} and "shuffled_accuracy_by_layer" in test
    assert set(val["accuracy_by_layer"]) == {"0", "1"}
    best = max(val["accuracy_by_layer"].values())
    assert reg.default_layer == val["best_layer"]
    assert val["accuracy_by_layer"][str(reg.default_layer)] == best
    assert reg.metadata["corpus"]["texts"]["sunny"] == {"train": 3, "dev": 1, "test": 2}
    assert reg.metadata["default_layer_chosen_by"] == "best dev-split accuracy"
    assert set(val["shuffled_accuracy_by_layer"]) == {"0", "1"}
    assert val["shuffled_seeds"] == [0, 1, 2, 3, 4]
    # each in-pass control is exactly a registry extracted with labels permuted by its seed,
    # and the reported control accuracy is their mean
    per_seed = []
    for k in range(5):
        shuffled = extract_emotions(tiny, Small(), layers=[0, 1], progress=False,
                                    label_permutation_seed=k, shuffled_control=False)
        assert shuffled.metadata["shuffled_labels_seed"] == k
        assert "shuffled_accuracy_by_layer" not in shuffled.validation
        assert shuffled.validation["accuracy_by_layer"] == val["shuffled_accuracy_by_seed"][str(k)]
        per_seed.append(shuffled.validation["accuracy_by_layer"])
    for layer in ("0", "1"):
        mean = sum(a[layer] for a in per_seed) / 5
        assert val["shuffled_accuracy_by_layer"][layer] == pytest.approx(mean, abs=1e-4)
    two = extract_emotions(tiny, Small(), layers=[0], progress=False, shuffled_control=2)
    assert two.validation["shuffled_seeds"] == [0, 1]


def test_non_finite_activations_name_the_site(tiny):
    def poison(act, hook):
        return act * float("nan")

    with tiny.hooks(fwd_hooks=[("blocks.1.hook_resid_post", poison)]):
        with pytest.raises(ExtractionError, match=r"blocks\.1\.hook_resid_post"):
            extract_emotions(tiny, TEXTS, layers=[1, 2], progress=False, neutral=[])


def test_bad_inputs(tiny):
    with pytest.raises(InputError, match="at least 2 emotions"):
        extract_emotions(tiny, {"a": ["x y"]}, progress=False)
    with pytest.raises(InputError, match="batch_size"):
        extract_emotions(tiny, TEXTS, batch_size=0, progress=False)
    with pytest.raises(InputError, match="position policy"):
        extract_emotions(tiny, TEXTS, positions="middle", progress=False)


def test_bf16_compute_dtype_agrees_with_float32_and_is_recorded(tiny):
    ref = extract_emotions(tiny, TEXTS, layers=[1, 3], progress=False, neutral=[])
    fast = extract_emotions(tiny, TEXTS, layers=[1, 3], progress=False, neutral=[],
                            compute_dtype=torch.bfloat16)
    for layer in (1, 3):
        cos = (ref.matrix(layer) * fast.matrix(layer)).sum(-1)
        assert cos.min() > 0.99, cos
        # bf16 really was used: the directions are close but not bit-identical
        assert not torch.equal(ref.matrix(layer), fast.matrix(layer))
    assert fast.metadata["compute_dtype"] == "bfloat16"
    assert ref.metadata["compute_dtype"] == "float32"
    assert ref.metadata["compute_dtype_reason"].startswith("the model's own dtype")
    with pytest.raises(InputError, match="compute_dtype"):
        extract_emotions(tiny, TEXTS, layers=[1], progress=False, compute_dtype=torch.int8)


def test_max_texts_per_emotion_caps_training_texts(tiny):
    capped = extract_emotions(tiny, TEXTS, layers=[2], progress=False, neutral=[],
                              max_texts_per_emotion=2)
    first_two = {e: t[:2] for e, t in TEXTS.items()}
    cm = _manual_class_means(tiny, first_two, 2)
    expected = cm - cm.mean(0, keepdim=True)
    assert torch.allclose(capped.matrix(2), expected / expected.norm(dim=-1, keepdim=True),
                          atol=1e-5)
    with pytest.raises(InputError, match="max_texts_per_emotion"):
        extract_emotions(tiny, TEXTS, layers=[2], progress=False, max_texts_per_emotion=0)


def test_heldout_scored_from_pass_one_equals_a_second_pass(tiny, monkeypatch):
    """Held-out means kept from pass 1 (no second forward) give the same validation figures as
    streaming the held-out texts again after the fit (the path for held-out sets too large to
    keep)."""
    from emolens.extraction import extract as ex
    from emolens.stimuli import Corpus

    words = {"sunny": ["sun", "warm", "bright", "light", "summer", "glow"],
             "stormy": ["rain", "thunder", "dark", "wind", "storm", "cold"],
             "quiet": ["still", "hush", "soft", "silent", "calm", "slow"]}
    corpus = Corpus.from_records(
        [{"id": f"{e}-{i}", "kind": "story", "emotion": e,
          "text": f"the {ws[i % 6]} and the {ws[(i + 1) % 6]} came back, {ws[(i + 2) % 6]} day"}
         for e, ws in words.items() for i in range(30)], forbidden={})
    calls: list[int] = []
    real = ex.stream_sites

    def counting(model, texts, *a, **k):
        calls.append(len(texts))
        return real(model, texts, *a, **k)

    monkeypatch.setattr(ex, "stream_sites", counting)
    kw = dict(layers=[1, 3], max_texts_per_emotion=4, progress=False, neutral=[], batch_size=8)
    kept = extract_emotions(tiny, corpus, **kw)
    n_kept = sum(calls)
    calls.clear()
    monkeypatch.setattr(ex, "HELDOUT_BUDGET_BYTES", 0)
    streamed = extract_emotions(tiny, corpus, **kw)
    n_streamed = sum(calls)
    held = kept.validation["n_texts"] + kept.validation["test"]["n_texts"]
    assert held > 0 and kept.validation["test"]["n_texts"] > 0
    assert n_kept == n_streamed == 12 + held  # each text is read exactly once either way
    for key in ("accuracy_by_layer", "shuffled_accuracy_by_layer", "confusion_best_layer",
                "n_texts"):
        assert kept.validation[key] == streamed.validation[key], key
        assert kept.validation["test"][key] == streamed.validation["test"][key], key
    assert kept.validation["split"] == "dev" and kept.validation["test"]["split"] == "test"


def test_neutral_moments_equal_a_direct_sum_in_any_batching(tiny):
    """stream_neutral_moments (behind extract_emotions' and the story bank's neutral moments):
    sum, outer product and count over content tokens equal run_with_cache one text at a time."""
    from emolens.extraction import stream_neutral_moments

    texts = [[{"role": "user", "content": "what time is it"},
              {"role": "assistant", "content": "it is noon"}],
             "the bus leaves at nine", "a table, two chairs and a lamp"]
    sites = [Site(0, "blocks.0.hook_resid_post"), Site(1, "blocks.1.hook_resid_post")]
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

    acc = stream_neutral_moments(tiny, texts, sites, batch_size=2, bar=Bar())
    assert ticks == [2, 1]
    one = stream_neutral_moments(tiny, texts, sites, batch_size=1)
    for k, site in enumerate(sites):
        rows = []
        for t in texts:
            b = to_inputs(tiny, [t])
            _, cache = tiny.run_with_cache(b.tokens, names_filter=site.name)
            rows.append(cache[site.name][0][position_mask(b, "content")[0]].double())
        x = torch.cat(rows)
        for got in (acc, one):
            assert got.count[k] == x.shape[0]
            torch.testing.assert_close(got.total[k], x.sum(0), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.outer[k], x.T @ x, rtol=1e-5, atol=1e-4)
    more = stream_neutral_moments(tiny, texts[:1], sites, acc)  # adds into the given one
    assert more is acc and acc.count[0] == one.count[0] + rows[0].shape[0]
