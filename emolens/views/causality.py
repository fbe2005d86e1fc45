"""Figures for the causal tests and the behaviour experiments, from plain arrays.

Like ``emolens.views.figures``: each function returns a ``matplotlib.figure.Figure`` built on
``Figure`` directly (never pyplot: no global state, nothing to close); pass ``ax=`` to draw into
an existing axes. Inputs are arrays (lists, numpy arrays, tensors, DataFrame columns) and names;
the causality results hold them (see docs/causality.md for the call per result).

- ``plot_patching_map``: a patching map, ``[layer, position]`` (or ``[layer, head]``; a
  ``[layer, pos, head]`` map shows the largest absolute value over heads).
- ``plot_pair_effects``: per-pair effects as points per group (directions, placebo, whole
  activation) with each group's estimate and interval.
- ``plot_component_writes``: what each head, output bias and MLP writes along a direction,
  layer x component.
- ``plot_interval_lines``: a mean with an interval band against a strength, one line per group
  (the shortcut experiment's and the steering sweep's dose-response).
- ``plot_preferences``: Elo by activity category, readout-Elo correlation per emotion, and the
  steering effect against the correlation.
- ``plot_dose_panels``: one ``plot_dose_response`` panel per template.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from emolens.errors import InputError
from emolens.views.figures import (
    _arr,
    _new_axes,
    _same_len,
    plot_dose_response,
    plot_heatmap,
)

# plain arrays: lists, numpy arrays, tensors, pandas columns
Values = torch.Tensor | np.ndarray | Iterable[Any]
Labels = Iterable[Any]


def _num(x: Any, name: str, ndim: int | None) -> np.ndarray:
    """Numbers as a float64 array (``ndim`` checked unless None); InputError names ``name``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x.to_numpy() if hasattr(x, "to_numpy") else list(x), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be numbers, got {type(x).__name__}") from exc
    return x if ndim is None else _arr(x, name, ndim)


def _labels(x: Any, name: str) -> list[str]:
    if isinstance(x, str):
        raise InputError(f"{name} must be a sequence of labels, got the string {x!r}")
    try:
        return [str(v) for v in (x.tolist() if hasattr(x, "tolist") else list(x))]
    except TypeError as exc:
        raise InputError(f"{name} must be a sequence of labels, got {type(x).__name__}") from exc


def _bottom_up_heatmap(m: np.ndarray, layers: Sequence[int], cols: Sequence[str], *,
                       title: str | None, colorbar_label: str, xlabel: str | None,
                       ax: Axes | None) -> Figure:
    """A diverging heatmap centred on 0 with layer 0 at the bottom."""
    rows = [str(v) for v in layers]
    _same_len(m, len(rows), "values rows", "layers")
    return plot_heatmap(m[::-1], rows[::-1], list(cols), cmap="RdBu", center=0.0,
                        annotate=False, colorbar_label=colorbar_label, xlabel=xlabel,
                        ylabel="layer", xrotation=90, title=title, ax=ax)


# --------------------------------------------------------------------------- patching
def plot_patching_map(values: Values, layers: Sequence[int], *,
                      tokens: Labels | None = None, xlabel: str | None = None,
                      colorbar_label: str = "metric", title: str | None = None,
                      ax: Axes | None = None) -> Figure:
    """A patching map: ``values [layer, x]`` (x = positions or heads), or ``[layer, pos, head]``
    shown as the largest absolute value over heads. ``tokens`` label the positions (e.g.
    ``PatchingMap.tokens``); pass ``PatchingMap.normalized()`` for the recovered fraction."""
    m = _num(values, "values", None)
    if m.ndim == 3:
        m = np.abs(m).max(-1)
        colorbar_label = f"max over heads |{colorbar_label}|"
    m = _arr(m, "values", 2)
    toks = None if tokens is None else _labels(tokens, "tokens")
    cols = toks if toks is not None and len(toks) == m.shape[1] else [
        str(i) for i in range(m.shape[1])]
    return _bottom_up_heatmap(m, layers, cols, title=title or "activation patching",
                              colorbar_label=colorbar_label, xlabel=xlabel, ax=ax)


def plot_pair_effects(groups: Mapping[str, Values],
                      intervals: Mapping[str, tuple[float, float, float]] | None = None, *,
                      ylabel: str = "change in metric", title: str | None = None,
                      ax: Axes | None = None) -> Figure:
    """Per-pair values as points, one column per group (``{name: [pair]}``), with
    ``intervals[name] = (estimate, low, high)`` drawn as a black point and error bar."""
    if not groups:
        raise InputError("groups is empty: pass {name: per-pair values}")
    fig, ax = _new_axes(ax, (5.0, 3.5))
    names = list(groups)
    for k, name in enumerate(names):
        y = _num(groups[name], f"groups[{name!r}]", 1)
        ax.scatter([k + (i % 7 - 3) * 0.03 for i in range(len(y))], y, s=10, alpha=0.5)
        if intervals and name in intervals:
            v, lo, hi = (float(x) for x in intervals[name])
            ax.errorbar([k], [v], yerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], fmt="o",
                        color="black", capsize=4)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "per-pair effects", fontsize=9)
    return fig


def plot_component_writes(grid: Values, layers: Sequence[int], columns: Labels, *,
                          title: str | None = None,
                          colorbar_label: str = "contribution to readout",
                          ax: Axes | None = None) -> Figure:
    """``grid [layer, component]`` (NaN = no such component), e.g. from
    ``DirectionAttribution.grid(emotion)``: heads, the attention output bias and the MLP."""
    m = _num(grid, "grid", 2)
    cols = _labels(columns, "columns")
    _same_len(m.T, len(cols), "grid columns", "column labels")
    return _bottom_up_heatmap(m, layers, cols, title=title or "direct writes along a direction",
                              colorbar_label=colorbar_label, xlabel=None, ax=ax)


# --------------------------------------------------------------------------- dose curves
def plot_interval_lines(x: Values, mean: Values, low: Values, high: Values,
                        groups: Labels, *, reference: float | None = None,
                        dashed: Sequence[str] = ("random",), vline: float | None = None,
                        xlabel: str = "steering strength (x mean residual norm)",
                        ylabel: str = "value", title: str | None = None,
                        ax: Axes | None = None) -> Figure:
    """One line per group of ``mean`` against ``x`` with a ``low``..``high`` band (parallel
    1-D arrays, e.g. the columns of ``shortcut_curves`` or ``steering.sweep_curves``).

    ``dashed`` groups are drawn grey and dashed (controls); ``reference`` is a dotted
    horizontal line (e.g. the unsteered mean); ``vline`` a dotted vertical one.
    """
    xs, ms = _num(x, "x", 1), _num(mean, "mean", 1)
    lo, hi = _num(low, "low", 1), _num(high, "high", 1)
    g = _labels(groups, "groups")
    for a, nm in ((ms, "mean"), (lo, "low"), (hi, "high")):
        _same_len(a, len(xs), nm, "x values")
    _same_len(xs, len(g), "x", "group labels")
    fig, ax = _new_axes(ax, (5.5, 3.8))
    for name in dict.fromkeys(g):
        sel = np.array([v == name for v in g])
        order = np.argsort(xs[sel], kind="mergesort")
        control = name in dashed
        color = "grey" if control else None
        line = ax.plot(xs[sel][order], ms[sel][order], marker="o", label=name, color=color,
                       ls="--" if control else "-")[0]
        ax.fill_between(xs[sel][order], lo[sel][order], hi[sel][order], alpha=0.15,
                        color=line.get_color())
    if reference is not None:
        ax.axhline(float(reference), color="black", lw=0.7, ls=":")
    if vline is not None:
        ax.axvline(float(vline), color="0.6", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "dose-response", fontsize=9)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- preferences
def plot_preferences(categories: Labels, elo: Values, emotions: Labels,
                     correlation: Values, *, elo_shift: Values | None = None,
                     random_shift: float | None = None, across_r: float | None = None
                     ) -> Figure:
    """Three panels: soft Elo per activity by ``categories``; the correlation of each emotion's
    readout with Elo (sorted); and, for emotions with an ``elo_shift`` (NaN = not steered),
    the shift when steered against that correlation, with ``random_shift`` (the random
    direction) as a dashed line and ``across_r`` (their correlation) in the title."""
    cats = _labels(categories, "categories")
    e = _num(elo, "elo", 1)
    _same_len(e, len(cats), "elo", "categories")
    names = _labels(emotions, "emotions")
    r = _num(correlation, "correlation", 1)
    _same_len(r, len(names), "correlation", "emotions")
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for c in sorted(set(cats)):
        ys = e[[k for k, v in enumerate(cats) if v == c]]
        axes[0].scatter([c] * len(ys), ys, alpha=0.7)
    axes[0].set_ylabel("soft Elo")
    axes[0].set_title("Elo by activity category", fontsize=10)
    order = np.argsort(r, kind="mergesort")
    axes[1].barh([names[i] for i in order], r[order], color="tab:blue")
    axes[1].set_xlabel("r(readout on activity tokens, Elo)")
    axes[1].tick_params(axis="y", labelsize=6)
    axes[1].set_title("readout-preference correlation", fontsize=10)
    ax = axes[2]
    if elo_shift is not None:
        s = _num(elo_shift, "elo_shift", 1)
        _same_len(s, len(names), "elo_shift", "emotions")
        steered = np.isfinite(s)
        ax.scatter(r[steered], s[steered])
        for k in np.flatnonzero(steered):
            ax.annotate(names[k], (r[k], s[k]), fontsize=7)
    if random_shift is not None and math.isfinite(random_shift):
        ax.axhline(float(random_shift), color="grey", ls="--", lw=0.8, label="random direction")
        ax.legend(fontsize=7)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("r(readout, Elo)")
    ax.set_ylabel("Elo shift when steered")
    title = "steering effect vs correlation"
    if across_r is not None and math.isfinite(across_r):
        title += f" (r = {across_r:.2f})"
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- dose panels
def _expected_map(expected: Mapping[str, Mapping[str, Any]] | Iterable[Any]
                  ) -> dict[str, dict[str, Any]]:
    if isinstance(expected, Mapping):
        return {str(t): {str(k): v for k, v in dict(d).items()} for t, d in expected.items()}
    out: dict[str, dict[str, Any]] = {}
    for item in expected:
        try:
            if isinstance(item, str):
                raise TypeError(item)
            t, emo, d = tuple(item)
        except (TypeError, ValueError) as exc:
            raise InputError("expected must be {template: {emotion: direction}} or "
                             f"(template, emotion, direction) triples, got {item!r}") from exc
        out.setdefault(str(t), {})[str(emo)] = d
    return out


def plot_dose_panels(template: Labels, value: Values, emotion: Labels,
                     score: Values,
                     expected: Mapping[str, Mapping[str, Any]] | Iterable[Any],
                     *, zscore: bool = True, columns: int = 4, title: str | None = None
                     ) -> Figure:
    """One panel per template (parallel arrays ``template, value, emotion, score``, e.g. the
    columns of ``dose_response(...).frame``): the score of each emotion the template expects to
    move (``expected``: ``{template: {emotion: "up" | "down"}}`` or triples such as
    ``zip(checks.template, checks.emotion, checks.expected)``) against the value on a log axis
    (linear when a value is not positive), z-scored per template and emotion with ``zscore``;
    each line is labelled with its expected and observed direction (Spearman rho)."""
    ts, es = _labels(template, "template"), _labels(emotion, "emotion")
    v, y = _num(value, "value", 1), _num(score, "score", 1)
    for a, nm in ((v, "value"), (y, "score")):
        _same_len(a, len(ts), nm, "template labels")
    _same_len(np.asarray(es), len(ts), "emotion", "template labels")
    exp = _expected_map(expected)
    temps = list(dict.fromkeys(ts))
    if not temps:
        raise InputError("no rows to draw: template is empty")
    cols = max(1, min(int(columns), len(temps)))
    nrows = math.ceil(len(temps) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).flatten()
    for ax, t in zip(axes, temps):
        xs: np.ndarray | None = None
        scores: dict[str, np.ndarray] = {}
        want: dict[str, Any] = {}
        for emo, d in exp.get(t, {}).items():
            sel = np.array([a == t and b == emo for a, b in zip(ts, es)])
            if not sel.any():
                continue                      # not scored (e.g. not in the registry)
            x_e, s_e = v[sel], y[sel]
            if xs is None:
                xs = x_e
            elif len(x_e) != len(xs) or not np.allclose(x_e, xs):
                raise InputError(f"template {t!r}: emotion {emo!r} has values {x_e.tolist()}, "
                                 f"another emotion {xs.tolist()}; give every emotion the same "
                                 "values")
            if zscore:
                s_e = (s_e - s_e.mean()) / (s_e.std() + 1e-8)
            scores[emo], want[emo] = s_e, d
        name = t.removeprefix("template-")
        if xs is None:
            ax.set_title(name, fontsize=8)
            continue
        plot_dose_response(xs, scores, expected=want, log_x=bool((xs > 0).all()),
                           xlabel="value", ylabel="score (z)" if zscore else "score",
                           title=name, ax=ax)
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    for ax in axes[len(temps):]:
        ax.axis("off")
    fig.suptitle(title or ("dose-response: readout (z-scored per template) vs value" if zscore
                           else "dose-response: readout vs value"), fontsize=9)
    return fig


__all__ = ["plot_component_writes", "plot_dose_panels", "plot_interval_lines",
           "plot_pair_effects", "plot_patching_map", "plot_preferences"]
