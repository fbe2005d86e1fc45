"""The geometry-controls report (``emolens controls --out DIR``): tables and figures of a
``GeometryControls``, in order; the figures are ``emolens.views.controls``'
``similarity_ceiling_figures`` and ``learning_curve_figures`` (it draws nothing itself)."""
from __future__ import annotations

from typing import Any


def controls_report(result: Any) -> Any:
    """A ``emolens.views.Report`` of a ``GeometryControls``."""
    from emolens.views.controls import learning_curve_figures, similarity_ceiling_figures
    from emolens.views.report import Report

    norms = result.norms
    rep = Report("emolens: is it the model or the stimuli?",
                 intro=("Directions are re-fitted from per-story activations read once "
                        "(emolens.compare.bank); the site is chosen on the dev split and "
                        "accuracy reported on the test split. Ranges are the 2.5-97.5 "
                        "percentiles over random half-splits or draws. Wall time "
                        f"{result.run.get('seconds')} s for the analysis."),
                 meta={"norms": f"{norms.get('source')} (version {norms.get('version')}; "
                                f"licence: {norms.get('licence')})",
                       "emotions": str(len(result.settings["emotions"]))})
    rep.add_section("reading", "What the numbers say")
    rep.add_text(result.statement())
    rep.add_section("representations", "Every representation on all its training stories",
                    "Models at the dev-chosen depth; the model's token embedding (first block's "
                    "input) and TF-IDF know only the words.",
                    limits="Few test stories per emotion: read the intervals.")
    rows = []
    for r in result.representations:
        g = r["at_chosen_site"]
        a = g.get("affect", {})
        rows.append({"representation": r["name"], "site": g["site"],
                     "depth": g["relative_depth"], "train stories": r["n_train"],
                     "test acc": g["test_accuracy"],
                     "CI": _ci(g.get("test_accuracy_ci")), "chance": r["chance"],
                     "PC1~valence": a.get("valence_r"), "CI ": _ci(a.get("valence_ci")),
                     "PC2~arousal": a.get("arousal_r"), "CI  ": _ci(a.get("arousal_ci")),
                     "best |valence r| PC1-3": g.get("best_valence_abs_r_PC1_3")})
    rep.add_table(rows)
    rep.add_section("split_half", "Split-half reliability",
                    "RSA between the geometries of two disjoint halves of each emotion's "
                    "training stories, and the mean cosine of each emotion's two "
                    "half-directions; the Spearman-Brown value estimates full-size reliability.")
    rep.add_table([{"representation": s["name"], "site": s["site"],
                    "depth": s["relative_depth"], "RSA": s["rsa"]["mean"],
                    "range": _ci(s["rsa"]["range"]), "Spearman-Brown": s["spearman_brown"],
                    "direction cosine": s["direction_cosine"]["mean"],
                    "test acc (half)": s["test_accuracy_per_half"]["mean"]}
                   for s in result.split_half])
    rep.add_section("cross", "Similarity between representations: same vs disjoint stories",
                    "Same stories: both fitted on the same half; disjoint: each on the other "
                    "half. The noise ceiling is the geometric mean of the two split-half "
                    "reliabilities at that size. Partial RSA removes what TF-IDF explains.")
    for caption, fig in similarity_ceiling_figures(result.cross).items():
        rep.add_figure(fig, caption)
    rep.add_table([{"a": c["a"], "b": c["b"], "depth": d["depth"],
                    "same": d["same_stories"]["mean"], "disjoint": d["disjoint_stories"]["mean"],
                    "ceiling": d["noise_ceiling"], "all shared": d["all_shared"],
                    "partial | TF-IDF": d.get("partial_given_tfidf")}
                   for c in result.cross for d in c["by_depth"]])
    rep.add_section("curves", "Learning curves",
                    "Random draws of the training stories per emotion (an emotion with fewer "
                    "keeps all it has); the site chosen on dev in each draw.")
    for caption, fig in learning_curve_figures(result.curves, result.settings).items():
        rep.add_figure(fig, caption)
    rep.add_table([{"representation": c["name"], "stories": p["label"], "draws": p["draws"],
                    **({"test acc": p["test_accuracy"]["mean"],
                        "range": _ci(p["test_accuracy"]["range"]),
                        "PC1~valence": p["PC1_valence_r"]["mean"],
                        "PC2~arousal": p["PC2_arousal_r"]["mean"]} if "pair" not in c
                       else {"RSA": p["rsa"]["mean"], "range": _ci(p["rsa"]["range"])})}
                   for c in result.curves for p in c["points"]])
    return rep


def _ci(pair: Any) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f"[{float(pair[0]):.2f}, {float(pair[1]):.2f}]"
