"""The main job on the default model (``emolens run --quick``): every section runs, results.json
holds what the report shows, the registry reloads, and DIR/report.html renders in headless
Chromium with its circuitsvis views and figures (screenshot kept under ``test-artifacts/``)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _chromium import CHROMIUM, PROBE, chromium, probe

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EMOLENS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SECTIONS = ("model", "corpus", "registry", "validation", "geometry", "scenarios",
            "dose_response", "steering", "scan", "causality", "behaviour")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from emolens.pipeline.run import RunConfig, run

    out = tmp_path_factory.mktemp("emolens-run")
    results = run(RunConfig(out=out, quick=True, reuse_registry=False, progress=False))
    return out, results


def test_quick_main_job_runs_every_section(quick_run: tuple[Path, dict]) -> None:
    import emolens
    from emolens.pipeline.run import QUICK_EMOTIONS

    out, r = quick_run
    assert r["run"]["errors"] == {}, r["run"]["errors"]
    for key in SECTIONS:
        assert key in r and "error" not in r[key], (key, r.get(key))
    assert json.loads((out / "results.json").read_text())["validation"] == \
        json.loads(json.dumps(r["validation"]))
    from emolens.hardware import cpu_features, resolve_compute_dtype

    auto = resolve_compute_dtype("auto", device="cpu")  # what auto picks on this machine
    assert r["registry"]["compute_dtype"] == auto.name
    assert r["registry"]["compute_dtype_reason"] == auto.reason
    assert r["run"]["machine"]["cpu"]["native_bf16"] == cpu_features().native_bf16
    assert r["registry"]["max_texts_per_emotion"] == 16

    val = r["validation"]
    best = max(val["accuracy_by_layer"].values())
    assert val["chance"] == pytest.approx(1 / 6)
    # six emotions, 38 held-out stories: directions must beat chance by far, the shuffled-label
    # control must not
    assert best >= 0.5, val["accuracy_by_layer"]
    assert best > val["max_shuffled_accuracy"] + 0.2, val

    reg = emolens.EmotionRegistry.load(out / "registry")
    assert sorted(reg.emotions) == sorted(QUICK_EMOTIONS)
    assert reg.default_layer == val["default_layer"]

    sc = r["scenarios"]
    assert len(sc["matrix"]) == len(sc["rows"]) and len(sc["matrix"][0]) == len(reg.emotions)
    # the reported counts are the ones the reported matrices give
    hits = sum(max(range(len(row)), key=row.__getitem__) == sc["columns"].index(e)
               for e, row in zip(sc["rows"], sc["matrix"]) if e in sc["columns"])
    assert sc["diagonal_hits"] == hits and sc["n_rows"] == len(sc["rows"])
    wt = r["steering"]["emotion_word_test"]
    own = [e for e, row in wt["deltas"].items() if max(row, key=row.get) == e]
    assert wt["n_emotions"] == 6 and wt["hits"] == len(own) and wt["hit_emotions"] == own
    assert all((m > 0) == (e in own) for e, m in wt["own_minus_best_other"].items())
    dose = r["dose_response"]
    assert dose["n_same_sign"] == sum(c.get("same_sign", False) for c in dose["checks"])
    assert "dose_response" not in r["behaviour"]  # computed once, in its own section
    assert r["validation"]["test_n_texts"] > 0 and r["validation"]["default_layer_chosen_on"] == "dev"
    scan = r["scan"]
    assert set(scan["emotions"]) <= set(reg.emotions) and scan["n_texts"] > 500
    sweep = r["steering"]["valence_sweep"]
    assert len(sweep["per_strength"]) >= 5
    assert r["behaviour"]["shortcut"]["n_scenarios"] >= 1
    from emolens.pipeline.run import OPT_IN, STUDY_SECTIONS

    # the round-2 study sections: the default ones ran (with their statements), the opt-in
    # ones did not (they need --study-round2)
    for key in STUDY_SECTIONS:
        assert (key in r) == (key not in OPT_IN), key
        if key in r:
            assert r[key]["sizes"]["preset"] == "quick" and len(r[key]["statement"]) > 80, key
    assert r["run"]["opt_in_sections"] == list(OPT_IN)
    if "detection" in r:  # the directions detect their emotions on held-out stories
        det = r["detection"]
        assert set(det["per_emotion"]) == set(QUICK_EMOTIONS)
        assert det["mean_auc"] > 0.75 and det["mean_auc"] > det["mean_placebo_auc"] + 0.15, det
    if "steering_score" in r:
        sc = r["steering_score"]
        assert sc["emotion"] == "happy" and len(sc["by_strength"]) == len(sc["strengths"])
        assert all(0.0 <= row["score"] <= 2.0 for row in sc["by_strength"])
        assert 0.0 <= sc["anti_steerable_fraction"]["value"] <= 1.0 and "placebo" in sc
    if "ablation" in r:
        ab = r["ablation"]
        assert reg.default_layer in ab["layers"] and all(k >= -1e-6 for k in ab["kl"])


@pytest.mark.browser
@pytest.mark.skipif(not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
                    reason=f"headless Chromium not found at {CHROMIUM}")
def test_main_job_report_renders_in_chromium(quick_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = quick_run
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    page = tmp_path / "report.html"
    page.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    seen, body, log = probe(page, tmp_path / "profile")
    assert seen["errors"] == [], seen
    assert seen["views"] >= 1 and seen["rendered"] == seen["views"], seen
    assert seen["images"] >= 8 and seen["images_ok"] == seen["images"], seen
    assert "view failed to render" not in body and "bundle not loaded" not in body
    assert "Refused to" not in log, "the CSP blocked a load: something tried the network"
    assert "Uncaught" not in log, log[-3000:]
    for heading in ("Held-out accuracy", "Implicit scenarios", "Steering", "Causality"):
        assert heading.lower() in body.lower(), heading

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "main-job-report.png"
    shot.unlink(missing_ok=True)
    run = chromium(tmp_path / "profile-shot", "--hide-scrollbars", "--window-size=1280,4000",
                   f"--screenshot={shot}", (out / "report.html").as_uri())
    assert run.returncode == 0, run.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copyfile(out / "report.html", ARTIFACTS / "main-job-report.html")
