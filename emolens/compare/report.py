"""The comparison report (``compare(..., out=DIR)`` writes ``DIR/report.html``): sections,
tables and the figures of ``emolens.views.compare`` in order; it draws nothing itself."""
from __future__ import annotations

from typing import Any


def _fmt_ci(lo: Any, hi: Any) -> str:
    if lo is None or hi is None:
        return ""
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _word_section(rep: Any, models: list[dict[str, Any]]) -> None:
    from emolens.views.compare import plot_ladder_word_test

    have = [m for m in models if "hits" in m.get("word_test", {})]
    w0 = have[0]["word_test"] if have else {}
    rep.add_section(
        "word_test", "Emotion-word steering test against random directions",
        "The main job's word test (`emolens.steering.emotion_word_test`): steer toward each "
        f"emotion ({', '.join(w0.get('emotions', []))}) at strength "
        f"{w0.get('strength', '?')} x the mean residual norm at the default layer, all "
        f"positions, on {w0.get('n_prompts', '?')} neutral prompts, and measure the change of "
        "log P(' word') of every steered emotion's word after a 'They feel' question. A hit: "
        "the own word rises more than every other word (about 1 hit expected by chance). The "
        "margin is the own word's change minus the largest other change; the control steers a "
        "random direction of the same norm in each emotion's place.",
        limits="Few emotions and prompts in the CPU preset; intervals are over steered "
               "emotions, not prompts. A word split into several tokens is scored by the sum "
               "of their log-probabilities.")
    rep.add_figure(plot_ladder_word_test(models), "by parameter count")
    rows = []
    for m in have:
        w = m["word_test"]
        a, c = w["mean_own_minus_best_other"], w["control_mean_own_minus_best_other"]
        d = w["margin_minus_control"]
        rows.append({"model": m["name"], "layer": w["layer"],
                     "hits": f"{w['hits']}/{w['n_emotions']}",
                     "control hits": f"{w['control_hits']}/{w['n_emotions']}",
                     "margin": a["value"], "margin CI": _fmt_ci(a["low"], a["high"]),
                     "control margin": c["value"],
                     "control CI": _fmt_ci(c["low"], c["high"]),
                     "margin - control": d["value"], "CI": _fmt_ci(d["low"], d["high"]),
                     "p (sign flip)": d["p_value"]})
    rep.add_table(rows or [{"word test": "not run"}])


def _scenario_section(rep: Any, models: list[dict[str, Any]]) -> None:
    from emolens.views.compare import plot_ladder_scenarios

    have = [m for m in models if "accuracy" in m.get("scenarios", {})]
    rep.add_section(
        "scenarios", "Implicit-scenario diagonal",
        "User messages that imply an emotion without naming it, read at the token that opens "
        "the assistant's reply, at each model's default layer (`emolens.readout."
        "scenario_matrix`). Rule: each readout emotion (column) is z-scored over the "
        "scenarios (`column_standardised()`, which removes a direction's constant offset at "
        "that token), and a scenario is a hit when its own emotion is its top column. "
        "Percentile bootstrap over scenarios (each resample re-standardised); references: "
        "chance (1 / readout emotions) and the scenario labels shuffled (mean, 95th "
        "percentile, one-sided permutation p).",
        limits="The standardisation is post hoc (chosen after the first full run showed a few "
               "columns on top of every row); few scenarios per emotion; only emotions with "
               "scenarios are rows, every run emotion is a column.")
    rep.add_figure(plot_ladder_scenarios(models), "by parameter count")
    rows = []
    for m in have:
        sc = m["scenarios"]
        z = sc["mean_own_z"]
        rows.append({"model": m["name"], "layer": sc["layer"],
                     "hits": f"{sc['hits']}/{sc['n_scenarios']}", "share": sc["accuracy"],
                     "CI": _fmt_ci(*sc["ci"]), "chance": sc["chance"],
                     "shuffled mean": sc["shuffled"]["mean"],
                     "shuffled q95": sc["shuffled"]["q95"], "p": sc["shuffled"]["p_value"],
                     "mean own z": z["value"], "z CI": _fmt_ci(*z["ci"]), "z p": z["shuffled"]["p_value"],
                     "rows on diagonal": f"{sc['row_diagonal_hits']}/{sc['n_rows']}",
                     "raw share (unstandardised)": sc["raw"]["per_scenario_accuracy"]})
    rep.add_table(rows or [{"scenarios": "not run"}])


def comparison_report(result: Any) -> Any:
    """A ``emolens.views.Report`` of a ``ComparisonResult``."""
    from emolens.views.compare import (
        plot_depth_accuracy,
        plot_depth_valence,
        plot_ladder_accuracy,
        plot_ladder_geometry,
        plot_rsa_matrix,
    )
    from emolens.views.report import Report

    models = result.models
    norms = result.norms
    rep = Report("emolens: emotion geometry across models",
                 intro=("Directions are fitted on the train split, the default layer is chosen "
                        "on the dev split, and accuracy is reported on the test split. "
                        f"Preset: {result.preset.get('name')}; {len(result.preset['emotions'])} "
                        f"emotions. Wall time {result.run.get('seconds')} s."),
                 meta={"preset": result.preset.get("name"),
                       "norms": f"{norms.get('source')} (version {norms.get('version')}; "
                                f"licence: {norms.get('licence')})"})
    rep.add_section("models", "Models", "Parameter counts, shapes and where the weights came "
                    "from.")
    rep.add_table([{"model": m["name"], "params": m["n_params"], "layers": m["n_layers"],
                    "d_model": m["d_model"], "quantisation": m["quantisation"],
                    "default layer (dev)": m["default_layer"],
                    "load s": m["seconds"]["load"], "extract s": m["seconds"]["extract"]}
                   for m in models])
    rep.add_section("accuracy", "Test-split accuracy and the shuffled control",
                    "Accuracy of the argmax of centred projections on held-out test stories "
                    "(chance = 1 / emotions), at the layer chosen on dev; the dashed lines are "
                    "directions fitted on permuted training labels.",
                    limits="Few test stories per emotion in the CPU preset: read the intervals.")
    rep.add_figure(plot_ladder_accuracy(models), "test split, by parameter count")
    rep.add_figure(plot_depth_accuracy(models), "test split, against relative depth")
    rows = []
    for m in models:
        if "test" in m:
            t = m["test"]["at_default_layer"]
            d = m.get("dev", {}).get("accuracy_by_layer", {}).get(str(m["default_layer"]))
            rows.append({"model": m["name"], "layer": t["layer"], "dev accuracy": d,
                         "test accuracy": t["accuracy"], "test CI low": t["ci"][0],
                         "test CI high": t["ci"][1], "shuffled (test)": t["shuffled"],
                         "test texts": m["test"]["n_texts"]})
    rep.add_table(rows, "dev (chooses the layer) and test (reports) side by side")
    rep.add_section("geometry", "PCA of the emotion vectors and the published norms",
                    f"PC1 / PC2 at each model's default layer; Pearson r with valence and "
                    f"arousal from {norms.get('source')} (version {norms.get('version')}, "
                    f"licence: {norms.get('licence')}). PC signs: PC1 positive for the "
                    "highest-valence rated emotion, PC2 for the highest-arousal one.",
                    limits="Only rated emotions enter the correlation; intervals resample "
                           "emotions with the PCA held fixed.")
    rep.add_figure(plot_ladder_geometry(models), "by parameter count")
    rep.add_figure(plot_depth_valence(models), "against relative depth")
    geo_rows = []
    for m in models:
        g = m["geometry"]
        row: dict[str, Any] = {"model": m["name"]}
        for k in ("PC1", "PC2"):
            e = g["explained_variance"][k]
            row.update({f"{k} var": e["value"],
                        f"{k} bias-corrected": e.get("bias_corrected"),
                        f"{k} CI (basic)": f"[{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]"})
        if "affect" in g:
            a = g["affect"]
            row.update({"r valence": a["valence_r"], "CI": f"[{a['valence_ci'][0]:.2f}, "
                        f"{a['valence_ci'][1]:.2f}]", "r arousal": a["arousal_r"],
                        "CI ": f"[{a['arousal_ci'][0]:.2f}, {a['arousal_ci'][1]:.2f}]",
                        "rated emotions": a["n"]})
        geo_rows.append(row)
    rep.add_table(geo_rows, "PC shares: the sample share, the bootstrap bias-corrected share "
                  "and the basic (reverse-percentile) bootstrap interval over emotions (the "
                  "sample share of the top components is biased upward with few emotions)")
    _word_section(rep, models)
    _scenario_section(rep, models)
    if result.rsa:
        names, mat = result.rsa_matrix()
        rep.add_section("rsa", "Similarity of emotion geometry between models",
                        "Spearman correlation of the off-diagonal cosine similarities of the "
                        "emotion vectors, each model at its default layer; bootstrap over "
                        "emotions, permutation p (emotion labels of one model shuffled).",
                        limits="RSA compares the arrangement of emotions, not what the "
                               "directions do.")
        rep.add_figure(plot_rsa_matrix(names, mat), "RSA matrix")
        rep.add_table([{"a": r["a"], "b": r["b"], "rho": r["rho"], "CI low": r["ci_low"],
                        "CI high": r["ci_high"], "p": r["p_value"],
                        "emotions": r["n_emotions"]} for r in result.rsa])
    return rep
