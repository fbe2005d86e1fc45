"""Figures of the model comparison (``emolens.compare``): the per-model dicts of
``ComparisonResult.models`` (``results.json["models"]``: plain numbers, lists and dicts) in, a
``matplotlib.figure.Figure`` out, built without pyplot (no global state, nothing to close).
``emolens.compare.report.comparison_report`` renders exactly these, in this order.

- ``plot_ladder_accuracy`` / ``plot_depth_accuracy``: test accuracy by parameter count (at the
  dev-chosen layer) and against relative depth, with the shuffled-label control.
- ``plot_ladder_geometry`` / ``plot_depth_valence``: PC1 / PC2 explained variance and their
  correlation with the published norms, by parameter count and against relative depth.
- ``plot_ladder_word_test``: word-test hits and margins against random directions.
- ``plot_ladder_scenarios``: the implicit-scenario diagonal (columns standardised).
- ``plot_rsa_matrix``: the model x model RSA matrix.

A model that lacks a measure (no ``"test"``, no ``"word_test"``, fewer than 5 rated emotions)
is left out of that figure; a panel with no model says so in its middle.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from emolens.errors import InputError
from emolens.views.figures import ArrayLike, _arr

Models = Sequence[dict[str, Any]]


def _fig(figsize: tuple[float, float] = (6.4, 3.8)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _x(models: Models) -> np.ndarray:
    return np.array([m["n_params"] for m in models], dtype=float)


def _label_points(ax: Axes, xs: np.ndarray, ys: list[float], names: list[str]) -> None:
    for x, y, n in zip(xs, ys, names):
        if y == y:  # not NaN
            ax.annotate(n, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _errbar(ax: Axes, xs: np.ndarray, vals: list[float], cis: list[list[float]], **kw: Any
            ) -> None:
    v = np.array(vals, dtype=float)
    lo = np.array([c[0] if c and c[0] is not None else np.nan for c in cis], dtype=float)
    hi = np.array([c[1] if c and c[1] is not None else np.nan for c in cis], dtype=float)
    # a percentile interval may miss the point estimate (small samples): clip, the table says
    err = [np.clip(np.nan_to_num(v - lo), 0, None), np.clip(np.nan_to_num(hi - v), 0, None)]
    ax.errorbar(xs, v, yerr=err, marker="o",
                capsize=3, **kw)


def _logx(ax: Axes) -> None:
    """A log parameter axis with labelled decades only (minor labels overlap)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _legend(ax: Axes) -> None:
    """A legend only when something carries a label (no matplotlib warning on empty axes)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _dress(ax: Axes, xlabel: str, ylabel: str, title: str, *,
           ylim: tuple[float, float] | None = None) -> None:
    """Axis labels, title, y range, light grid and (when anything is labelled) the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)


def plot_ladder_accuracy(models: Models) -> Figure:
    """Test accuracy at each model's dev-chosen layer against parameter count (95% CI), the
    shuffled-label control and chance."""
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


def plot_depth_accuracy(models: Models) -> Figure:
    """Test accuracy by layer against relative depth, one line per model (dashed: the
    shuffled-label control)."""
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


def plot_ladder_geometry(models: Models) -> Figure:
    """PC1 / PC2 explained variance (left) and their correlation with the valence / arousal
    norms (right) at each model's default layer, against parameter count."""
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


def plot_depth_valence(models: Models) -> Figure:
    """r(PC1, valence) by layer against relative depth, one line per model."""
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


def _pair_figure(have: Models, draw: Callable[[Axes, Axes, np.ndarray], None], *,
                 panels: tuple[tuple[str, str], tuple[str, str]], empty: str) -> Figure:
    """Two panels against parameter count (log axis, labelled decades): ``draw(ax1, ax2, xs)``
    plots the models ``have`` (those that carry the measure) at ``xs``, their parameter counts;
    ``panels`` gives each panel's (y label, title); ``empty`` is written on both panels when no
    model has the measure."""
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


def plot_ladder_word_test(models: Models) -> Figure:
    """Word test by parameter count: hits (left) and the mean own-minus-best-other margin
    (right), directions against random directions of equal norm."""
    have = [m for m in models if "hits" in m.get("word_test", {})]

    def draw(ax1: Axes, ax2: Axes, xs: np.ndarray) -> None:
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

    return _pair_figure(have, draw, empty="no word test in this comparison", panels=(
        ("emotions whose own word rises most", "Emotion-word steering test: hits"),
        ("own minus best other word (nats; 95% CI)", "Margin, mean over steered emotions")))


def plot_ladder_scenarios(models: Models) -> Figure:
    """Scenario diagonal by parameter count: share of scenarios whose own emotion is the top
    (column-standardised) readout (left) and the mean own-emotion z (right)."""
    have = [m for m in models if "accuracy" in m.get("scenarios", {})]

    def draw(ax1: Axes, ax2: Axes, xs: np.ndarray) -> None:
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

    return _pair_figure(have, draw, empty="no scenarios in this comparison", panels=(
        ("share of scenarios", "Scenario diagonal (columns standardised)"),
        ("z (readout standardised over scenarios)", "Own-emotion z at the reply-opening token")))


def plot_rsa_matrix(names: Sequence[str], matrix: ArrayLike) -> Figure:
    """The symmetric model x model RSA matrix (Spearman rho, -1..1), values written in the
    cells (``ComparisonResult.rsa_matrix()`` gives both arguments)."""
    m = _arr(matrix, "matrix", 2)
    if m.shape != (len(names), len(names)):
        raise InputError(f"matrix has shape {tuple(m.shape)} but there are {len(names)} names")
    fig, ax = _fig((4.8 + 0.3 * len(names), 4.0 + 0.3 * len(names)))
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), list(names), rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), list(names), fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("RSA of emotion geometry (Spearman rho)")
    fig.tight_layout()
    return fig
