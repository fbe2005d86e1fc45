"""The comparison report: figures across the ladder (by parameter count) and against depth."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _fig(figsize: tuple[float, float] = (6.4, 3.8)) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _x(models: list[dict[str, Any]]) -> np.ndarray:
    return np.array([m["n_params"] for m in models], dtype=float)


def _label_points(ax: Any, xs: np.ndarray, ys: list[float], names: list[str]) -> None:
    for x, y, n in zip(xs, ys, names):
        if y == y:  # not NaN
            ax.annotate(n, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _errbar(ax: Any, xs: np.ndarray, vals: list[float], cis: list[list[float]], **kw: Any
            ) -> None:
    v = np.array(vals, dtype=float)
    lo = np.array([c[0] if c and c[0] is not None else np.nan for c in cis], dtype=float)
    hi = np.array([c[1] if c and c[1] is not None else np.nan for c in cis], dtype=float)
    # a percentile interval may miss the point estimate (small samples): clip, the table says
    err = [np.clip(np.nan_to_num(v - lo), 0, None), np.clip(np.nan_to_num(hi - v), 0, None)]
    ax.errorbar(xs, v, yerr=err, marker="o",
                capsize=3, **kw)


def _logx(ax: Any) -> None:
    """A log parameter axis with labelled decades only (minor labels overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend(ax: Any) -> None:
    """A legend only when something carries a label (no matplotlib warning on empty axes)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _dress(ax: Any, xlabel: str, ylabel: str, title: str, *,
           ylim: tuple[float, float] | None = None) -> None:
    """Axis labels, title, y range, light grid and (when anything is labelled) the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)


def ladder_accuracy_figure(models: list[dict[str, Any]]) -> Any:
    fig, ax = _fig()
    have = [m for m in models if "test" in m]
    xs = _x(have)
    acc = [m["test"]["at_default_layer"]["accuracy"] for m in have]
    _errbar(ax, xs, acc, [m["test"]["at_default_layer"]["ci"] for m in have],
            label="test accuracy at the dev-chosen layer (95% CI)")
    sh = [m["test"]["at_default_layer"]["shuffled"] for m in have]
    ax.plot(xs, [np.nan if s is None else s for s in sh], "s--", color="0.45",
            label="shuffled-label control (test)")
    if have:
        ax.axhline(have[0]["test"]["chance"], ls=":", color="0.3", label="chance")
    _label_points(ax, xs, acc, [m["name"] for m in have])
    _logx(ax)
    _dress(ax, "parameters", "accuracy",
           "Emotion classification on the test split, by model size", ylim=(0.0, 1.02))
    return fig


def depth_accuracy_figure(models: list[dict[str, Any]]) -> Any:
    fig, ax = _fig()
    for m in models:
        if "test" not in m:
            continue
        depth = m["relative_depth"]
        acc = [m["test"]["accuracy_by_layer"][str(la)] for la in m["layers"]]
        line = ax.plot(depth, acc, marker=".", label=m["name"])[0]
        sh = m["test"].get("shuffled_accuracy_by_layer")
        if sh:
            ax.plot(depth, [sh[str(la)] for la in m["layers"]], ls="--", lw=0.8,
                    color=line.get_color(), alpha=0.6)
    _dress(ax, "relative depth ((layer + 1) / n_layers)",
           "test accuracy (dashed: shuffled control)",
           "Test accuracy against relative depth", ylim=(0.0, 1.02))
    return fig


def ladder_geometry_figure(models: list[dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.8))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = _x(models)
    for k in ("PC1", "PC2"):
        ev = [m["geometry"]["explained_variance"][k] for m in models]
        # the sample share is biased upward at small n: plot the bias-corrected share with its
        # basic bootstrap interval, the sample share hollow beside it
        _errbar(ax1, xs, [e.get("bias_corrected", e["value"]) for e in ev],
                [e["ci"] for e in ev], label=f"{k} (bias-corrected, 95% basic CI)")
        ax1.plot(xs, [e["value"] for e in ev], "o", mfc="none", color=ax1.lines[-1].get_color()
                 if ax1.lines else None, label=f"{k} sample share")
    _logx(ax1)
    _dress(ax1, "parameters", "share of variance over emotions",
           "PC1 / PC2 explained variance (default layer)")
    have = [m for m in models if "affect" in m["geometry"]]
    xa = _x(have)
    for key, label in (("valence", "PC1 ~ valence"), ("arousal", "PC2 ~ arousal")):
        if have:
            _errbar(ax2, xa, [m["geometry"]["affect"][f"{key}_r"] for m in have],
                    [m["geometry"]["affect"][f"{key}_ci"] for m in have], label=label)
    _label_points(ax2, xa, [m["geometry"]["affect"]["valence_r"] for m in have],
                  [m["name"] for m in have])
    ax2.axhline(0, color="0.3", lw=0.8)
    if have:
        _logx(ax2)
    else:
        ax2.text(0.5, 0.5, "fewer than 5 rated emotions: no correlation", ha="center",
                 transform=ax2.transAxes, fontsize=8)
    _dress(ax2, "parameters", "Pearson r (95% bootstrap CI)",
           "Correlation with the published norms", ylim=(-1.05, 1.05))
    return fig


def depth_valence_figure(models: list[dict[str, Any]]) -> Any:
    fig, ax = _fig()
    for m in models:
        by = m["geometry"].get("affect_by_layer")
        if not by:
            continue
        ax.plot(m["relative_depth"], [by[str(la)]["valence_r"] for la in m["layers"]],
                marker=".", label=m["name"])
    if not ax.lines:
        _empty(ax, "fewer than 5 rated emotions: no correlation")
    ax.axhline(0, color="0.3", lw=0.8)
    _dress(ax, "relative depth ((layer + 1) / n_layers)", "r(PC1, valence)",
           "PC1 ~ valence against relative depth", ylim=(-1.05, 1.05))
    return fig


def ladder_pair_figure(have: list[dict[str, Any]],
                       draw: Callable[[Any, Any, np.ndarray], None], *,
                       panels: tuple[tuple[str, str], tuple[str, str]], empty: str) -> Any:
    """Two panels against parameter count (log axis, labelled decades): ``draw(ax1, ax2, xs)``
    plots the models ``have`` (those that carry the measure) at ``xs``, their parameter counts;
    ``panels`` gives each panel's (y label, title); ``empty`` is written on both panels when no
    model has the measure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.8))
    axes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if have:
        draw(*axes, _x(have))
    for ax, (ylabel, title) in zip(axes, panels):
        if have:
            _logx(ax)
        else:
            _empty(ax, empty)
        _dress(ax, "parameters", ylabel, title)
    return fig


def ladder_word_test_figure(models: list[dict[str, Any]]) -> Any:
    """Word test by parameter count: hits (left) and the mean own-minus-best-other margin
    (right), directions against random directions of equal norm."""
    have = [m for m in models if "hits" in m.get("word_test", {})]

    def draw(ax1: Any, ax2: Any, xs: np.ndarray) -> None:
        w = [m["word_test"] for m in have]
        ax1.plot(xs, [x["hits"] for x in w], "o-", label="emotion directions")
        ax1.plot(xs, [x["control_hits"] for x in w], "s--", color="0.45",
                 label="random directions, equal norm")
        ax1.axhline(w[0]["chance_hits"], ls=":", color="0.3", label="chance (1 hit)")
        ax1.set_ylim(-0.2, max(x["n_emotions"] for x in w) + 0.2)
        _label_points(ax1, xs, [float(x["hits"]) for x in w], [m["name"] for m in have])
        for key, label, kw in (("mean_own_minus_best_other", "emotion directions", {}),
                               ("control_mean_own_minus_best_other",
                                "random directions, equal norm",
                                {"color": "0.45", "ls": "--"})):
            est = [x[key] for x in w]
            _errbar(ax2, xs, [e["value"] for e in est], [[e["low"], e["high"]] for e in est],
                    label=label, **kw)
        ax2.axhline(0, color="0.3", lw=0.8)

    return ladder_pair_figure(have, draw, empty="no word test in this comparison", panels=(
        ("emotions whose own word rises most", "Emotion-word steering test: hits"),
        ("own minus best other word (nats; 95% CI)", "Margin, mean over steered emotions")))


def ladder_scenario_figure(models: list[dict[str, Any]]) -> Any:
    """Scenario diagonal by parameter count: share of scenarios whose own emotion is the top
    (column-standardised) readout (left) and the mean own-emotion z (right)."""
    have = [m for m in models if "accuracy" in m.get("scenarios", {})]

    def draw(ax1: Any, ax2: Any, xs: np.ndarray) -> None:
        sc = [m["scenarios"] for m in have]
        _errbar(ax1, xs, [s["accuracy"] for s in sc], [s["ci"] for s in sc],
                label="scenarios whose own emotion is top (95% CI)")
        ax1.plot(xs, [s["shuffled"]["mean"] for s in sc], "s--", color="0.45",
                 label="shuffled labels (mean)")
        ax1.plot(xs, [s["shuffled"]["q95"] for s in sc], "v:", color="0.6",
                 label="shuffled labels (95th percentile)")
        ax1.axhline(sc[0]["chance"], ls=":", color="0.3", label="chance (1 / emotions)")
        _label_points(ax1, xs, [s["accuracy"] for s in sc], [m["name"] for m in have])
        ax1.set_ylim(0, 1.02)
        z = [s["mean_own_z"] for s in sc]
        _errbar(ax2, xs, [x["value"] for x in z], [x["ci"] for x in z],
                label="mean z of the own emotion (95% CI)")
        ax2.plot(xs, [x["shuffled"]["q95"] for x in z], "v:", color="0.6",
                 label="shuffled labels (95th percentile)")
        ax2.axhline(0, color="0.3", lw=0.8)

    return ladder_pair_figure(have, draw, empty="no scenarios in this comparison", panels=(
        ("share of scenarios", "Scenario diagonal (columns standardised)"),
        ("z (readout standardised over scenarios)", "Own-emotion z at the reply-opening token")))


def rsa_figure(names: list[str], mat: Any) -> Any:
    fig, ax = _fig((4.8 + 0.3 * len(names), 4.0 + 0.3 * len(names)))
    m = np.asarray(mat, dtype=float)
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("RSA of emotion geometry (Spearman rho)")
    fig.tight_layout()
    return fig


def _fmt_ci(lo: Any, hi: Any) -> str:
    if lo is None or hi is None:
        return ""
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _word_section(rep: Any, models: list[dict[str, Any]]) -> None:
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
    rep.add_figure(ladder_word_test_figure(models), "by parameter count")
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
    rep.add_figure(ladder_scenario_figure(models), "by parameter count")
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
    rep.add_figure(ladder_accuracy_figure(models), "test split, by parameter count")
    rep.add_figure(depth_accuracy_figure(models), "test split, against relative depth")
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
    rep.add_figure(ladder_geometry_figure(models), "by parameter count")
    rep.add_figure(depth_valence_figure(models), "against relative depth")
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
        rep.add_figure(rsa_figure(names, mat.numpy()), "RSA matrix")
        rep.add_table([{"a": r["a"], "b": r["b"], "rho": r["rho"], "CI low": r["ci_low"],
                        "CI high": r["ci_high"], "p": r["p_value"],
                        "emotions": r["n_emotions"]} for r in result.rsa])
    return rep
