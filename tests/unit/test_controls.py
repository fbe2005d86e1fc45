"""Story banks and the geometry controls (issue 18): the bank re-fits exactly what
extract_emotions fits, resumes without re-reading and refuses tampered shards; TF-IDF learns its
vocabulary on train only; on synthetic banks with planted structure the controls find it, tell
story-driven agreement from shared geometry, and stay null on noise."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from emolens.compare.bank import StoryBank, build_story_bank, layers_at_depths
from emolens.compare.controls import geometry_controls
from emolens.compare.lexical import tfidf_bank, words
from emolens.errors import InputError
from emolens.sites import Site


@pytest.fixture(scope="module")
def tiny():
    from test_compare import _tiny_corpus  # the same four-emotion corpus as the compare tests

    from emolens.testing import tiny_model

    return tiny_model(seed=1, n_layers=4), _tiny_corpus()


# ------------------------------------------------------------------------------- the bank
def test_bank_refit_equals_extract_emotions(tiny):
    from emolens.extraction import extract_emotions

    model, corpus = tiny
    bank = build_story_bank(model, corpus, layers=[1, 3], progress=False)
    assert [s.name for s in bank.sites] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post",
                                            "blocks.3.hook_resid_post"]
    assert bank.relative_depths == [0.5, 1.0]
    neutral = [list(r.messages) for r in corpus.neutral]
    # all training stories, and a cap of 3 per emotion (the first in corpus order)
    for cap in (None, 3):
        ref = extract_emotions(model, corpus, layers=[1, 3], neutral=neutral, progress=False,
                               shuffled_control=False, max_texts_per_emotion=cap)
        rows = torch.tensor([i for e, ids in bank.per_emotion(bank.rows("train")).items()
                             for i in ids[:cap]])
        reg = bank.fit(rows)
        assert torch.equal(reg.tensor(), ref.tensor())
        assert torch.equal(reg.center(3), ref.center(3))
        assert reg.mean_norm(1) == pytest.approx(ref.mean_norm(1), rel=1e-6)
        dev = bank.accuracy(reg, bank.rows("dev"))
        for layer, correct in dev.items():
            assert float(correct.double().mean()) == pytest.approx(
                ref.validation["accuracy_by_layer"][str(layer)], abs=1e-4)
    emb = bank.fit(bank.rows("train"), sites="embed")
    assert [s.name for s in emb.sites] == ["blocks.0.hook_resid_pre"]
    with pytest.raises(InputError, match="no stories of"):
        bank.fit(bank.rows("train", emotions=["sunny", "busy"]))


def test_bank_resumes_and_refuses_tampering(tiny, tmp_path):
    model, corpus = tiny
    path = tmp_path / "bank"
    first = build_story_bank(model, corpus, layers=[1, 3], progress=False, path=path)
    assert first.info["streamed_emotions"] == corpus.emotions
    again = build_story_bank(model, corpus, layers=[1, 3], progress=False, path=path)
    assert again.info["streamed_emotions"] == [] and again.info["resumed_emotions"]
    assert torch.equal(again.means, first.means)
    assert torch.equal(again.neutral_outer, first.neutral_outer)
    with pytest.raises(InputError, match="other settings"):
        build_story_bank(model, corpus, layers=[2, 3], progress=False, path=path)
    manifest = json.loads((path / "bank.json").read_text())
    shard = path / manifest["shards"]["quiet"]["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        build_story_bank(model, corpus, layers=[1, 3], progress=False, path=path)


def test_layers_at_depths():
    assert layers_at_depths(30, (0.4, 0.55, 0.65, 0.75)) == [11, 16, 19, 21]  # ties: the shallower
    assert layers_at_depths(4, (0.5, 0.5, 1.0)) == [1, 3]
    with pytest.raises(InputError, match="relative depth"):
        layers_at_depths(10, (0.0,))


def test_tfidf_vocabulary_is_fitted_on_train_only(tiny):
    model, corpus = tiny
    bank = build_story_bank(model, corpus, layers=[3], progress=False)
    lex = tfidf_bank(corpus, bank)
    assert lex.info["fitted_on"] == "train split" and lex.means.shape[1] == 1
    assert words("Didn't she SAY so?") == ["didn't", "she", "say", "so"]
    # each emotion has its own words: the lexical baseline classifies test stories perfectly
    unit, center, _ = lex.directions(lex.rows("train"))
    pred = lex.predictions(unit, center, lex.rows("test"))[0]
    assert bool((pred == lex.labels[lex.rows("test")]).all())
    norms = lex.means[:, 0].norm(dim=-1)
    assert torch.allclose(norms[lex.keep], torch.ones(int(lex.keep.sum())), atol=1e-5)


# ------------------------------------------------------------------ synthetic banks
def _records(n_emo: int, n_train: int, n_held: int) -> list[dict]:
    recs = []
    for e in range(n_emo):
        for i in range(n_train + 2 * n_held):
            split = "train" if i < n_train else ("dev" if i < n_train + n_held else "test")
            recs.append({"id": f"e{e}-{i}", "emotion": f"e{e}", "split": split,
                         "author": "hand-written"})
    return recs


def _bank(features: torch.Tensor, recs: list[dict], n_emo: int, name: str) -> StoryBank:
    """A bank whose block site holds ``features`` [story, d] (site 0, the 'embedding', holds
    pure noise)."""
    n, d = features.shape
    # crc32, not hash(): str hashes change with PYTHONHASHSEED, so the noise (and every table
    # built on it) would differ from one process to the next
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000)
    means = torch.stack([torch.randn(n, d, generator=g), features], 1).float()
    return StoryBank(model={"model_id": name}, n_layers=2,
                     sites=[Site(0, "blocks.0.hook_resid_pre"), Site(1, "blocks.1.hook_resid_post")],
                     emotions=[f"e{i}" for i in range(n_emo)], records=recs, means=means,
                     keep=torch.ones(n, dtype=torch.bool),
                     norm_sum=torch.ones(n, 2, dtype=torch.float64),
                     n_tokens=torch.ones(n, dtype=torch.float64), neutral_total=None,
                     neutral_outer=None, neutral_count=None)


N_EMO, N_TRAIN, N_HELD, D = 12, 24, 4, 32


def _planted(seed: int, geometry: torch.Tensor, story_noise: torch.Tensor, noise: float,
             width: int) -> torch.Tensor:
    """Stories = their emotion's prototype + the story's own (shared) quirk + private noise,
    seen through a model-specific random orthonormal map into ``width`` dims."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, geometry.shape[1], generator=g))
    labels = torch.arange(N_EMO).repeat_interleave(N_TRAIN + 2 * N_HELD)
    x = geometry[labels] + story_noise
    return x @ q.T + noise * torch.randn(len(labels), width, generator=g)


def _norms(geometry: torch.Tensor) -> dict[str, tuple[float, float]]:
    return {f"e{i}": (float(geometry[i, 0]), float(geometry[i, 1])) for i in range(N_EMO)}


def test_controls_find_shared_geometry_and_valence():
    g = torch.Generator().manual_seed(0)
    geometry = torch.randn(N_EMO, 8, generator=g) * torch.tensor([6.0, 3.0, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    n = N_EMO * (N_TRAIN + 2 * N_HELD)
    quirks = torch.zeros(n, 8)
    recs = _records(N_EMO, N_TRAIN, N_HELD)
    banks = {"a": _bank(_planted(1, geometry, quirks, 0.5, D), recs, N_EMO, "a"),
             "b": _bank(_planted(2, geometry, quirks, 0.5, D + 16), recs, N_EMO, "b")}
    res = geometry_controls(banks, norms=_norms(geometry), tfidf=False, n_splits=6,
                            sizes=(2, 6, None), n_draws=4, n_boot=100, n_perm=100,
                            progress=False)
    a = next(r for r in res.representations if r["name"] == "a")["at_chosen_site"]
    assert a["test_accuracy"] > 0.9 and a["affect"]["valence_r"] > 0.8
    noise_emb = next(r for r in res.representations if r["name"] == "a (embedding)")
    assert noise_emb["at_chosen_site"]["test_accuracy"] < 0.3  # pure noise: near chance 1/12
    rel = next(s for s in res.split_half if s["name"] == "a")
    assert rel["rsa"]["mean"] > 0.8 and rel["spearman_brown"] >= rel["rsa"]["mean"]
    emb_rel = next(s for s in res.split_half if s["name"] == "a (embedding)")
    assert abs(emb_rel["rsa"]["mean"]) < 0.3
    cross = next(c for c in res.cross if c["kind"] == "model-model")["by_depth"][0]
    assert cross["disjoint_stories"]["mean"] > 0.75
    assert abs(cross["same_stories"]["mean"] - cross["disjoint_stories"]["mean"]) < 0.1
    curve = next(c for c in res.curves if c["name"] == "a")["points"]
    assert curve[0]["test_accuracy"]["mean"] < curve[-1]["test_accuracy"]["mean"]
    assert curve[-1]["draws"] == 1 and curve[0]["draws"] == 4
    assert "does not depend on sharing the stories" in res.statement()
    assert "<table" in res._repr_html_()
    json.dumps(res.to_dict(), allow_nan=True)


def test_disjoint_halves_expose_story_driven_agreement():
    """No emotion geometry in common, but each story carries a strong quirk that both models
    see: same-story RSA is high, disjoint-story RSA collapses to about zero."""
    g = torch.Generator().manual_seed(3)
    n = N_EMO * (N_TRAIN + 2 * N_HELD)
    quirks = 3.0 * torch.randn(n, 8, generator=g)
    recs = _records(N_EMO, N_TRAIN, N_HELD)
    banks = {"a": _bank(_planted(1, torch.randn(N_EMO, 8, generator=g) * 0.2, quirks, 0.5, D),
                        recs, N_EMO, "a"),
             "b": _bank(_planted(2, torch.randn(N_EMO, 8, generator=g) * 0.2, quirks, 0.5, D),
                        recs, N_EMO, "b")}
    res = geometry_controls(banks, norms=None if False else {f"e{i}": (float(i), float(-i))
                                                           for i in range(N_EMO)},
                            tfidf=False, n_splits=6, sizes=(None,), n_draws=1, n_boot=50,
                            n_perm=50, progress=False)
    cross = next(c for c in res.cross if c["kind"] == "model-model")["by_depth"][0]
    assert cross["same_stories"]["mean"] > 0.6
    assert abs(cross["disjoint_stories"]["mean"]) < 0.25
    assert cross["same_stories"]["mean"] - cross["disjoint_stories"]["mean"] > 0.4
    assert "shared stories account for part" in res.statement()
    assert math.isfinite(cross["noise_ceiling"])


def test_controls_check_their_inputs():
    recs = _records(3, 4, 1)
    a = _bank(torch.randn(len(recs), 8), recs, 3, "a")
    b = _bank(torch.randn(len(recs), 8), recs, 3, "b")
    b.emotions = ["e0", "e2", "e1"]
    with pytest.raises(InputError, match="other emotions"):
        geometry_controls({"a": a, "b": b}, tfidf=False, progress=False)
    with pytest.raises(InputError, match="at least one"):
        geometry_controls({}, progress=False)
    with pytest.raises(InputError, match="n_splits"):
        geometry_controls({"a": a}, tfidf=False, n_splits=0, progress=False)


def test_load_story_bank_reads_without_the_model(tiny, tmp_path):
    from emolens.compare.bank import load_story_bank

    model, corpus = tiny
    with pytest.raises(InputError, match="no story bank"):
        load_story_bank(tmp_path / "none")
    built = build_story_bank(model, corpus, layers=[2], progress=False, path=tmp_path / "b")
    loaded = load_story_bank(tmp_path / "b")
    assert loaded.sites == built.sites and loaded.records == built.records
    assert torch.equal(loaded.means, built.means) and torch.equal(loaded.keep, built.keep)
    assert torch.equal(loaded.neutral_outer, built.neutral_outer)
    assert torch.equal(loaded.fit(loaded.rows("train")).tensor(),
                       built.fit(built.rows("train")).tensor())


def test_controls_report_and_cli_arguments():
    from emolens.compare.controls_cli import _model_spec
    from emolens.compare.controls_report import controls_report

    g = torch.Generator().manual_seed(5)
    geometry = torch.randn(N_EMO, 8, generator=g) * 3
    recs = _records(N_EMO, N_TRAIN, N_HELD)
    quirks = torch.zeros(len(recs), 8)
    banks = {"a": _bank(_planted(1, geometry, quirks, 0.5, D), recs, N_EMO, "a"),
             "b": _bank(_planted(2, geometry, quirks, 0.5, D), recs, N_EMO, "b")}
    res = geometry_controls(banks, norms=_norms(geometry), tfidf=False, n_splits=2,
                            sizes=(4, 48, None), n_draws=2, n_boot=20, n_perm=20,
                            progress=False)
    pts = next(c for c in res.curves if c["name"] == "a")["points"]
    assert [p["label"] for p in pts] == ["4", "all"]  # 48 and None both mean every story
    html = controls_report(res).to_html()
    assert html.count("<img") >= 4 and "Split-half reliability" in html
    assert "a vs b" in html
    # the report's figures are exactly the public calls of emolens.views.controls, in order
    import re

    from emolens.views.controls import learning_curve_figures, similarity_ceiling_figures
    from emolens.views.figures import figure_to_data_uri

    sim = similarity_ceiling_figures(res.cross)
    curves = learning_curve_figures(res.curves, res.settings)
    assert list(sim) == ["a vs b"] and list(curves) == [
        "test accuracy", "PC1 ~ valence r", "PC2 ~ arousal r",
        "cross-model RSA on the same drawn stories"]
    assert re.findall(r'<img src="([^"]+)"', html) == [
        figure_to_data_uri(f) for f in (*sim.values(), *curves.values())]
    acc_ax = curves["test accuracy"].axes[0]
    line_a = next(ln for ln in acc_ax.lines if ln.get_label() == "a")
    assert list(line_a.get_ydata()) == pytest.approx([p["test_accuracy"]["mean"] for p in pts])
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == ["4", "all"]
    assert any(list(ln.get_ydata()) == [1 / N_EMO] * 2 for ln in acc_ax.lines)  # chance
    assert _model_spec("qwen2.5-coder-1.5b:12") == ("qwen2.5-coder-1.5b", 12)
    assert _model_spec("smollm2-135m") == ("smollm2-135m", None)
    with pytest.raises(InputError, match="whole number"):
        _model_spec("smollm2-135m:0")


def _controls_of_synthetic_banks() -> dict:
    """``geometry_controls`` with every part on (TF-IDF from a synthetic corpus, the norms,
    learning curves), small; ``to_dict()`` without ``run`` (its wall-clock seconds)."""
    from emolens.io import json_safe
    from emolens.stimuli import Corpus

    n_emo, n_train, n_held = 6, 6, 2
    g = torch.Generator().manual_seed(0)
    geometry = torch.randn(n_emo, 8, generator=g) * torch.tensor([6.0, 3.0] + [0.7] * 6)
    recs = _records(n_emo, n_train, n_held)
    labels = torch.arange(n_emo).repeat_interleave(n_train + 2 * n_held)
    vocab = ["sun", "rain", "wind", "river", "stone", "tree", "bird", "cloud"]
    corpus = Corpus.from_records([
        {"id": r["id"], "kind": "story", "emotion": r["emotion"],
         "text": f"the {vocab[int(r['emotion'][1:])]} and the "
                 f"{vocab[int(r['id'].split('-')[1]) % 8]} came back"} for r in recs],
        forbidden={})
    banks = {name: _bank(geometry[labels] @ torch.randn(8, width, generator=g)
                         + 0.5 * torch.randn(len(recs), width, generator=g), recs, n_emo, name)
             for name, width in (("a", 16), ("b", 24))}
    norms = {f"e{i}": (float(geometry[i, 0]), float(geometry[i, 1])) for i in range(n_emo)}
    res = geometry_controls(banks, corpus, norms, n_splits=2, sizes=(2, None), n_draws=2,
                            n_boot=20, n_perm=20, seed=3, progress=False)
    out = json_safe(res.to_dict())
    out.pop("run")
    return out


def test_controls_are_the_same_in_every_process():
    """Two interpreters with other str hashes (PYTHONHASHSEED) and other global torch, numpy
    and random states give the same controls: nothing depends on hash(), set order or an
    unseeded draw."""
    here = Path(__file__).parent
    code = ("import json, random, sys; import numpy, torch; s = int(sys.argv[1]); "
            "torch.manual_seed(s); numpy.random.seed(s); random.seed(s); "
            f"sys.path.insert(0, {str(here)!r}); import test_controls as t; "
            "print(json.dumps(t._controls_of_synthetic_banks(), sort_keys=True))")
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code, hash_seed], capture_output=True,
                             text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        outs.append(json.loads(run.stdout))
    assert outs[0] == outs[1]
    rep = {r["name"]: r for r in outs[0]["representations"]}
    assert set(rep) == {"a", "a (embedding)", "b", "b (embedding)", "TF-IDF"}
    assert "partial_given_tfidf" in outs[0]["cross"][0]["by_depth"][0]
    assert "affect" in rep["a"]["at_chosen_site"]          # the seeded bootstraps ran
