"""The geometry-controls report (``emolens controls --out DIR``): tables and figures of a
``GeometryControls`` (figures from ``emolens.views.controls``)."""
from __future__ import annotations

from typing import Any


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def controls_report(result: Any) -> Any:
    """A ``emolens.views.Report`` of a ``GeometryControls``."""
    from emolens.views.controls import plot_learning_curves, plot_similarity_ceiling
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
    for c in result.cross:
        if c["kind"] == "model-model":
            bd = c["by_depth"]
            rep.add_figure(plot_similarity_ceiling(
                [_nan(d["depth"]) for d in bd], [_nan(d["same_stories"]["mean"]) for d in bd],
                [_nan(d["disjoint_stories"]["mean"]) for d in bd],
                [_nan(d["noise_ceiling"]) for d in bd], title=f"{c['a']} vs {c['b']}"),
                f"{c['a']} vs {c['b']}")
    rep.add_table([{"a": c["a"], "b": c["b"], "depth": d["depth"],
                    "same": d["same_stories"]["mean"], "disjoint": d["disjoint_stories"]["mean"],
                    "ceiling": d["noise_ceiling"], "all shared": d["all_shared"],
                    "partial | TF-IDF": d.get("partial_given_tfidf")}
                   for c in result.cross for d in c["by_depth"]])
    rep.add_section("curves", "Learning curves",
                    "Random draws of the training stories per emotion (an emotion with fewer "
                    "keeps all it has); the site chosen on dev in each draw.")
    singles = [c for c in result.curves if "pair" not in c]
    if singles:
        sizes = [_size(p, result) for p in singles[0]["points"]]
        lexical = [c["name"] for c in singles if "(embedding)" in c["name"]
                   or c["name"] == "TF-IDF"]
        for key, label in (("test_accuracy", "test accuracy"),
                           ("PC1_valence_r", "PC1 ~ valence r"),
                           ("PC2_arousal_r", "PC2 ~ arousal r")):
            curves = {c["name"]: ([_nan(p[key]["mean"]) for p in c["points"]],
                                  [_nan(p[key]["range"][0]) for p in c["points"]],
                                  [_nan(p[key]["range"][1]) for p in c["points"]])
                      for c in singles}
            chance = 1.0 / len(result.settings["emotions"]) if key == "test_accuracy" else 0.0
            rep.add_figure(plot_learning_curves(sizes, curves, dashed=lexical,
                                                reference=chance, ylabel=label,
                                                labels=[p["label"] for p in singles[0]["points"]]),
                           label)
    pairs = [c for c in result.curves if "pair" in c]
    if pairs:
        sizes = [_size(p, result) for p in pairs[0]["points"]]
        curves = {c["name"]: ([_nan(p["rsa"]["mean"]) for p in c["points"]],
                              [_nan(p["rsa"]["range"][0]) for p in c["points"]],
                              [_nan(p["rsa"]["range"][1]) for p in c["points"]])
                  for c in pairs}
        rep.add_figure(plot_learning_curves(sizes, curves, ylabel="RSA between models",
                                            labels=[p["label"] for p in pairs[0]["points"]]),
                       "cross-model RSA on the same drawn stories")
    rep.add_table([{"representation": c["name"], "stories": p["label"], "draws": p["draws"],
                    **({"test acc": p["test_accuracy"]["mean"],
                        "range": _ci(p["test_accuracy"]["range"]),
                        "PC1~valence": p["PC1_valence_r"]["mean"],
                        "PC2~arousal": p["PC2_arousal_r"]["mean"]} if "pair" not in c
                       else {"RSA": p["rsa"]["mean"], "range": _ci(p["rsa"]["range"])})}
                   for c in result.curves for p in c["points"]])
    return rep


def _size(point: dict[str, Any], result: Any) -> float:
    """x position of a curve point: its size; for "all", the most stories any emotion has, or
    one step (x2) beyond the largest drawn size when that is not larger (the tick says "all")."""
    if point["stories_per_emotion"] is not None:
        return float(point["stories_per_emotion"])
    drawn = [s for s in result.settings["sizes"] if s is not None
             and s < point.get("most_per_emotion", 0)]
    most = float(point.get("most_per_emotion") or 0)
    return most if drawn and most > max(drawn) else float(max(drawn, default=1) * 2)


def _ci(pair: Any) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f"[{float(pair[0]):.2f}, {float(pair[1]):.2f}]"
