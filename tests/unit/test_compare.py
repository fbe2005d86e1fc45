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


def test_explained_variance_interval_covers_a_planted_population_share():
    """Few emotions drawn from a population with a known PC1 share: the sample share and its
    resamples are biased upward; the percentile interval almost never covers the population
    share, the basic bootstrap interval (what ``ci`` reports) mostly does."""
    from emolens.compare.core import _explained_variance

    d, n = 40, 16
    scales = torch.tensor([3.0, 2.0] + [1.0] * (d - 2), dtype=torch.float64)
    pop = float(scales[0] ** 2 / (scales ** 2).sum())
    g = torch.Generator().manual_seed(0)
    cover_basic = cover_pct = 0
    biases = []
    reps = 30
    for r in range(reps):
        m = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
        ev = _explained_variance(m, 200, seed=r)["PC1"]
        cover_basic += ev["ci"][0] <= pop <= ev["ci"][1]
        cover_pct += ev["ci_percentile"][0] <= pop <= ev["ci_percentile"][1]
        biases.append(ev["bias"])
        assert ev["bias_corrected"] == pytest.approx(ev["value"] - ev["bias"])
        assert 0.0 <= ev["ci"][0] <= ev["ci"][1] <= 1.0
    assert sum(biases) / reps > 0.03  # the resamples sit above the sample share
    assert cover_pct <= 0.2 * reps, cover_pct
    assert cover_basic >= 0.7 * reps, cover_basic


def test_scenario_diagonal_standardises_columns_and_has_a_shuffled_reference():
    from emolens.compare.core import scenario_diagonal

    cols = ["a", "b", "c", "d", "e"]
    emos = [c for c in cols[:4] for _ in range(6)]  # 24 scenarios, 'e' is a readout only
    g = torch.Generator().manual_seed(0)
    per = torch.randn(24, 5, generator=g, dtype=torch.float64) * 0.1
    for i, e in enumerate(emos):
        per[i, cols.index(e)] += 1.0  # the own emotion is raised ...
    per[:, 4] += 5.0  # ... but one column is on top of every raw row (a constant offset)
    assert (per.argmax(1) == 4).all()
    res = scenario_diagonal(per, emos, cols, n_boot=200, n_perm=500)
    assert res["accuracy"] == 1.0 and res["hits"] == 24 and res["chance"] == 0.2
    assert res["ci"][0] > 0.75 and res["shuffled"]["mean"] < 0.45
    assert res["shuffled"]["p_value"] == pytest.approx(1 / 501)
    assert res["mean_own_z"]["value"] > 1.0 and res["mean_own_z"]["shuffled"]["q95"] < 0.6
    # a hand-sized case: the z-scores decide, not the raw values
    per2 = torch.tensor([[10.0, 1.0], [11.0, 0.0], [10.5, 0.6]], dtype=torch.float64)
    r2 = scenario_diagonal(per2, ["b", "a", "b"], ["a", "b"], n_boot=20, n_perm=20)
    z = (per2 - per2.mean(0)) / per2.std(0)
    want = [int(z[0].argmax()) == 1, int(z[1].argmax()) == 0, int(z[2].argmax()) == 1]
    assert r2["hits"] == sum(want) == 3
    assert r2["mean_own_z"]["value"] == pytest.approx(float((z[0, 1] + z[1, 0] + z[2, 1]) / 3))
    # no signal: near the shuffled reference, not significant
    null = scenario_diagonal(torch.randn(24, 5, generator=g, dtype=torch.float64), emos, cols,
                             n_boot=100, n_perm=300)
    assert null["accuracy"] < 0.5 and null["shuffled"]["p_value"] > 0.01
    with pytest.raises(InputError, match=r"\['z'\]"):
        scenario_diagonal(per[:2], ["a", "z"], cols)
    with pytest.raises(InputError, match="does not match"):
        scenario_diagonal(per, emos[:3], cols)


def test_word_emotions_follow_the_preset_then_the_core_set():
    from emolens.compare.core import PRESETS, word_emotions_for

    cpu = PRESETS["cpu"]
    assert word_emotions_for(cpu, cpu.emotions) == ["happy", "proud", "calm", "sad", "angry",
                                                    "afraid"]
    assert cpu.word_prompts == 4 and cpu.word_strength == 0.1
    gpu = PRESETS["gpu"]
    assert word_emotions_for(gpu, ["sad", "bored", "happy", "lonely"]) == ["happy", "sad"]
    assert word_emotions_for(gpu, ["bored", "lonely"]) == ["bored", "lonely"]
    # fewer than two of the preset's emotions present: the core set, then all
    assert word_emotions_for(cpu, ["happy", "loving", "x"]) == ["happy", "loving"]


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
    recs.append({"id": "n1", "kind": "neutral", "messages": [
        {"role": "user", "content": "where is the station"},
        {"role": "assistant", "content": "two streets east"}]})
    for emo, ws in words.items():
        for i in range(3):
            recs.append({"id": f"s-{emo}-{i}", "kind": "scenario", "emotion": emo, "messages": [
                {"role": "user", "content": f"today was all {ws[i]} and {ws[i + 3]}"}]})
    return Corpus.from_records(recs, forbidden={})


@pytest.mark.filterwarnings("error:No artists with labels found to put in legend")
def test_compare_end_to_end_on_two_tiny_models(tmp_path):
    from emolens.compare import Preset, compare
    from emolens.testing import tiny_model

    corpus = _tiny_corpus()
    assert corpus.stories(split="dev") and corpus.stories(split="test")
    preset = Preset("tiny", None, max_texts_per_emotion=6, n_neutral=1, layer_stride=1,
                    n_boot=50, n_perm=50, batch_size=16, word_emotions=("sad", "happy"),
                    word_prompts=5, word_strength=0.25)
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
    assert "Emotion-word steering test" in html and "Implicit-scenario diagonal" in html
    # every figure of the report is one public call of emolens.views.compare, in this order
    import re

    from emolens.views import compare as vc
    from emolens.views.figures import figure_to_data_uri

    calls = [vc.plot_ladder_accuracy(res.models), vc.plot_depth_accuracy(res.models),
             vc.plot_ladder_geometry(res.models), vc.plot_depth_valence(res.models),
             vc.plot_ladder_word_test(res.models), vc.plot_ladder_scenarios(res.models),
             vc.plot_rsa_matrix(*res.rsa_matrix())]
    assert re.findall(r'<img src="([^"]+)"', html) == [figure_to_data_uri(f) for f in calls]
    assert (tmp_path / "registries").is_dir()
    # the word test and the scenario diagonal: the library calls on the same registry give the
    # same numbers (so a wrong layer, prompt set, strength or emotion list would show)
    from emolens.readout import scenario_matrix
    from emolens.steering import emotion_word_test

    prompts = [list(r.messages)[:1] for r in corpus.neutral[:2]]
    for model, m in zip(sorted([a, b], key=lambda x: sum(p.numel() for p in x.parameters())),
                        data["models"]):
        reg = res.registries[m["name"]]
        w = m["word_test"]
        assert w["emotions"] == list(reg.emotions)  # no core emotion here: all four are steered
        assert w["n_prompts"] == 2 and w["strength"] == 0.25 and w["layer"] == m["default_layer"]
        ref = emotion_word_test(model, reg, list(reg.emotions), strength=0.25, prompts=prompts)
        assert w["hits"] == ref.hits and w["control_hits"] == ref.control_hits
        for e in reg.emotions:
            assert w["own_minus_best_other"][e] == pytest.approx(ref.margins[e], abs=2e-4)
        diff = [ref.margins[e] - ref.control_margins[e] for e in reg.emotions]
        assert w["margin_minus_control"]["value"] == pytest.approx(sum(diff) / 4, abs=1e-6)
        assert w["split"].startswith("neutral")
        sc = m["scenarios"]
        zsm = scenario_matrix(model, reg, corpus.scenarios).column_standardised()
        assert sc["n_scenarios"] == 12 and sc["layer"] == m["default_layer"]
        assert sc["accuracy"] == pytest.approx(zsm.per_scenario_accuracy)
        assert sc["row_diagonal_hits"] == zsm.diagonal_hits and sc["chance"] == 0.25
        assert sc["ci"][0] <= sc["accuracy"] <= sc["ci"][1]
        assert 0 < sc["shuffled"]["p_value"] <= 1 and sc["shuffled"]["n_perm"] == 50
        assert set(m["seconds"]) == {"load", "extract", "word_test", "scenarios"}


def test_compare_is_public_and_callable():
    import emolens
    import emolens.compare.similarity  # importing a submodule must not hide the callable

    assert "compare" in emolens.__all__ and callable(emolens.compare)
    with pytest.raises(InputError, match="at least one model"):
        emolens.compare([])
    with pytest.raises(InputError, match="unknown compare preset 'cpuu'"):
        emolens.compare(["x"], preset="cpuu")


def test_compare_views_draw_the_numbers_they_are_given():
    from emolens.views.compare import plot_depth_valence, plot_ladder_accuracy, plot_rsa_matrix

    test = {"at_default_layer": {"accuracy": 0.5, "ci": [0.25, 0.75], "shuffled": 0.2},
            "chance": 0.25}
    models = [{"name": "a", "n_params": 10, "test": test},
              {"name": "b", "n_params": 1000,
               "test": {**test, "at_default_layer": {"accuracy": 0.875, "ci": [0.8, 0.9],
                                                     "shuffled": None}}},
              {"name": "c", "n_params": 100}]  # no test split: left out
    ax = plot_ladder_accuracy(models).axes[0]
    by = {line.get_label(): line for line in ax.lines}
    acc = ax.containers[0].lines[0]  # the errorbar's data line
    shuffled, chance = by["shuffled-label control (test)"], by["chance"]
    assert list(acc.get_xdata()) == [10.0, 1000.0] and list(acc.get_ydata()) == [0.5, 0.875]
    caps = sorted(float(y) for c in ax.containers[0].lines[1] for y in c.get_ydata())
    assert caps == pytest.approx([0.25, 0.75, 0.8, 0.9])
    assert shuffled.get_ydata()[0] == 0.2 and shuffled.get_ydata()[1] != shuffled.get_ydata()[1]
    assert list(chance.get_ydata()) == [0.25, 0.25] and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    # no model with rated emotions: the panel says so instead of drawing an empty legend
    empty = plot_depth_valence([{"name": "a", "geometry": {}}]).axes[0]
    assert [t.get_text() for t in empty.texts] == ["fewer than 5 rated emotions: no correlation"]
    mat = torch.tensor([[1.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    rsa_ax = plot_rsa_matrix(["a", "b"], mat).axes[0]
    assert [t.get_text() for t in rsa_ax.texts] == ["1.00", "0.30", "0.30", "1.00"]
    with pytest.raises(InputError, match=r"matrix has shape \(2, 2\) but there are 3 names"):
        plot_rsa_matrix(["a", "b", "c"], mat)
