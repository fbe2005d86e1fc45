"""Cross-model comparison: RSA on planted geometry, per-registry measures, and compare() end to
end on two tiny models (results.json and the report name the split of every figure)."""
from __future__ import annotations

import json

import pytest
import torch

from emolens.compare import cosine_matrix, registry_rsa, rsa
from emolens.compare.core import measure_registry
from emolens.errors import InputError
from emolens.registry import EmotionRegistry
from emolens.sites import Site

N_EMO = 16
NAMES = [f"e{i:02d}" for i in range(N_EMO)]


def _registry(vecs: torch.Tensor, names=NAMES, layer: int = 0) -> EmotionRegistry:
    vecs = vecs / vecs.norm(dim=-1, keepdim=True)
    return EmotionRegistry(vecs[None].float(), list(names),
                           [Site(layer, f"blocks.{layer}.hook_resid_post")], torch.ones(1),
                           metadata={"n_layers": layer + 1})


def _planted(seed: int, d: int = 24, k: int = 4) -> torch.Tensor:
    """Emotion vectors lying near a k-dim structured subspace (shared 'geometry' of seed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_EMO, k, generator=g, dtype=torch.float64) * torch.tensor(
        [4.0, 2.5, 1.5, 1.0], dtype=torch.float64)


def _embed(core: torch.Tensor, d: int, seed: int, noise: float) -> torch.Tensor:
    """The same geometry in another model's basis and width: random orthonormal map + noise."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, core.shape[1], generator=g, dtype=torch.float64))
    return core @ q.T + noise * torch.randn(core.shape[0], d, generator=g, dtype=torch.float64)


def test_shared_planted_geometry_gives_high_rsa_across_widths():
    core = _planted(0)
    a = _registry(_embed(core, 32, 1, 0.3))
    b = _registry(_embed(core, 48, 2, 0.3))  # another width and basis, the same arrangement
    res = registry_rsa(a, b, n_boot=300, n_perm=300)
    assert res.rho > 0.8 and res.ci_low > 0.6 and res.p_value < 0.01
    assert res.n_emotions == N_EMO and res.n_pairs == N_EMO * (N_EMO - 1) // 2
    # an exact rotation keeps every cosine: rho is exactly 1
    exact = registry_rsa(a, _registry(_embed(core, 40, 3, 0.0) @ torch.eye(40, dtype=torch.float64)),
                         n_boot=50, n_perm=50)
    pure = registry_rsa(_registry(_embed(core, 32, 1, 0.0)), _registry(_embed(core, 40, 3, 0.0)),
                        n_boot=50, n_perm=50)
    assert pure.rho == pytest.approx(1.0, abs=1e-9) and exact.rho > 0.8


def test_independent_geometries_give_rsa_near_zero_and_not_significant():
    rhos, ps = [], []
    for s in range(6):
        a = _registry(_embed(_planted(10 + s), 32, 1, 0.3))
        b = _registry(_embed(_planted(100 + s), 32, 2, 0.3))
        r = registry_rsa(a, b, n_boot=100, n_perm=400, seed=s)
        rhos.append(r.rho)
        ps.append(r.p_value)
        assert r.ci_low < r.rho < r.ci_high
    assert abs(sum(rhos) / len(rhos)) < 0.15, rhos
    assert sum(p < 0.05 for p in ps) <= 1, ps  # at most the occasional false positive


def test_rsa_uses_shared_emotions_and_checks_inputs():
    core = _planted(0)
    a = _registry(_embed(core, 32, 1, 0.1))
    keep = [3, 0, 5, 7, 9, 11, 2]  # another order and a subset
    b = _registry(_embed(core, 32, 2, 0.1)[keep], [NAMES[i] for i in keep])
    res = registry_rsa(a, b, n_boot=50, n_perm=50)
    assert res.emotions == [n for n in NAMES if n in {NAMES[i] for i in keep}]
    assert res.rho > 0.8
    sim = cosine_matrix(torch.randn(5, 8))
    assert torch.allclose(sim.diagonal(), torch.ones(5, dtype=torch.float64))
    with pytest.raises(InputError, match="at least 4"):
        rsa(sim[:3, :3], sim[:3, :3], ["a", "b", "c"])
    with pytest.raises(InputError, match=r"\[5, 5\]"):
        rsa(sim, sim[:4, :4], list("abcde"))
    # seeded: the same seed gives the same interval and p
    again = registry_rsa(a, b, n_boot=50, n_perm=50)
    assert (again.ci_low, again.p_value) == (res.ci_low, res.p_value)


def test_measure_registry_reports_splits_and_planted_valence():
    g = torch.Generator().manual_seed(0)
    valence = torch.linspace(1, 9, N_EMO, dtype=torch.float64)
    arousal = torch.rand(N_EMO, generator=g, dtype=torch.float64) * 8 + 1
    vecs = torch.randn(N_EMO, 20, generator=g, dtype=torch.float64) * 0.1
    vecs[:, 0] += valence - valence.mean()  # valence is the dominant axis
    reg = _registry(vecs)
    reg.metadata["validation"] = {
        "split": "dev", "accuracy_by_layer": {"0": 0.5}, "chance": 1 / N_EMO, "n_texts": 32,
        "test": {"split": "test", "accuracy_by_layer": {"0": 0.25}, "n_texts": 40,
                 "chance": 1 / N_EMO, "shuffled_accuracy_by_layer": {"0": 0.06}}}
    norms = {e: (float(v), float(a)) for e, v, a in zip(NAMES, valence, arousal)}
    m = measure_registry(reg, norms, n_boot=200, n_perm=200)
    assert m["dev"]["split"] == "dev" and m["test"]["split"] == "test"
    t = m["test"]["at_default_layer"]
    assert t["accuracy"] == 0.25 and t["shuffled"] == 0.06 and t["ci"][0] < 0.25 < t["ci"][1]
    assert m["relative_depth"] == [1.0]
    geo = m["geometry"]
    # planted on one axis (bent by the unit norm); PC1 oriented to the highest-valence emotion
    assert geo["affect"]["valence_r"] > 0.85
    assert geo["affect"]["norms"]["source"].startswith("user-supplied")
    ev = geo["explained_variance"]["PC1"]
    from emolens.geometry import emotion_pca

    ref = emotion_pca(reg).explained_variance_ratio  # an independent decomposition
    assert ev["value"] == pytest.approx(float(ref[0]), abs=1e-5) and ev["value"] > 0.8
    assert geo["explained_variance"]["PC2"]["value"] == pytest.approx(float(ref[1]), abs=1e-5)
    assert ev["ci"][0] <= ev["value"] <= ev["ci"][1]


def _tiny_corpus():
    from emolens.stimuli import Corpus

    words = {"sunny": ["sun", "warm", "bright", "light", "summer", "glow"],
             "stormy": ["rain", "thunder", "dark", "wind", "storm", "cold"],
             "quiet": ["still", "hush", "soft", "silent", "calm", "slow"],
             "busy": ["rush", "crowd", "loud", "fast", "noise", "many"]}
    recs = []
    for emo, ws in words.items():
        for i in range(24):
            text = f"the {ws[i % 6]} and the {ws[(i + 1) % 6]} came back, {ws[(i + 2) % 6]} day"
            recs.append({"id": f"{emo}-{i}", "kind": "story", "emotion": emo, "text": text})
    recs.append({"id": "n0", "kind": "neutral", "messages": [
        {"role": "user", "content": "what time is it"},
        {"role": "assistant", "content": "it is noon"}]})
    return Corpus.from_records(recs, forbidden={})


def test_compare_end_to_end_on_two_tiny_models(tmp_path):
    from emolens.compare import Preset, compare
    from emolens.testing import tiny_model

    corpus = _tiny_corpus()
    assert corpus.stories(split="dev") and corpus.stories(split="test")
    preset = Preset("tiny", None, max_texts_per_emotion=6, n_neutral=1, layer_stride=1,
                    n_boot=50, n_perm=50, batch_size=16)
    a, b = tiny_model(seed=1, n_layers=2), tiny_model(seed=2, n_layers=3, d_model=48)
    norms = {"sunny": (8.0, 5.0), "stormy": (3.0, 6.5), "quiet": (6.0, 2.0), "busy": (5.0, 7.0),
             "x": (1.0, 1.0)}
    res = compare([a, b], corpus, preset=preset, norms=norms, out=tmp_path, progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    params = [m["n_params"] for m in data["models"]]
    assert params == sorted(params) and {m["n_layers"] for m in data["models"]} == {2, 3}
    for m in data["models"]:
        assert m["test"]["split"] == "test" and m["dev"]["split"] == "dev"
        assert m["test"]["n_texts"] == len(corpus.stories(split="test"))
        assert m["dev"]["n_texts"] == len(corpus.stories(split="dev"))
        assert set(m["test"]["accuracy_by_layer"]) == {str(x) for x in m["layers"]}
        assert m["default_layer_chosen_by"] == "best dev-split accuracy"
        assert m["relative_depth"][-1] == 1.0
    assert len(data["rsa"]) == 1 and data["rsa"][0]["n_emotions"] == 4
    assert data["splits"]["test"].startswith("accuracy")
    names, mat = res.rsa_matrix()
    assert mat.shape == (2, 2) and float(mat[0, 1]) == data["rsa"][0]["rho"]
    html = (tmp_path / "report.html").read_text()
    assert "test split" in html and "RSA" in html and "<img" in html
    assert (tmp_path / "registries").is_dir()


def test_compare_is_public_and_callable():
    import emolens
    import emolens.compare.similarity  # importing a submodule must not hide the callable

    assert "compare" in emolens.__all__ and callable(emolens.compare)
    with pytest.raises(InputError, match="at least one model"):
        emolens.compare([])
    with pytest.raises(InputError, match="unknown compare preset 'cpuu'"):
        emolens.compare(["x"], preset="cpuu")
