"""Static figures for reports (matplotlib): each function returns a ``matplotlib.figure.Figure``.

Figures are built on ``Figure`` directly, never through pyplot: no global state, nothing
accumulates across calls, no display backend is needed (PNG output uses Agg). Pass ``ax=`` to
draw into an existing axes instead. Inputs are plain arrays (lists, numpy arrays or tensors)
and names, so any stage can feed them.

- ``plot_layer_accuracy``: validation accuracy by layer, with chance and a shuffled-label control.
- ``plot_emotion_pca``: emotions on two principal components, coloured by valence ratings.
- ``plot_heatmap`` and its uses ``plot_cosine_matrix``, ``plot_layer_similarity``,
  ``plot_scenario_matrix`` (implicit scenarios, diagonal accuracy in the title).
- ``plot_dose_response``: a score against a template value, one line per emotion, expected
  direction marked against the observed one.
- ``plot_effects``: effects with confidence intervals as bars, placebo bars beside them.
- ``figure_to_data_uri`` / ``figure_to_svg``: inline a figure in HTML (no files, no network).
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from emolens.errors import InputError
from emolens.stats import spearman_r

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]
_UP = ("up", "increase", "+", "rise", "higher")
_DOWN = ("down", "decrease", "-", "fall", "lower")


# ------------------------------------------------------------------------------ export
def figure_to_data_uri(fig: Figure, fmt: str = "png", *, dpi: int = 110) -> str:
    """``data:image/png;base64,...`` (or ``data:image/svg+xml;base64,...`` with ``fmt="svg"``)."""
    if fmt not in ("png", "svg"):
        raise InputError(f"fmt must be 'png' or 'svg', got {fmt!r}")
    buf = io.BytesIO()
    meta: dict[str, Any] = {"Software": None} if fmt == "png" else {"Date": None}
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    mime = "image/png" if fmt == "png" else "image/svg+xml"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_to_svg(fig: Figure) -> str:
    """The figure as SVG markup (text is escaped by matplotlib; no scripts, no external refs)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------- helpers
def _arr(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numbers, got {type(x).__name__}") from exc
    if a.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    return a


def _same_len(a: np.ndarray, n: int, name: str, of: str) -> None:
    if len(a) != n:
        raise InputError(f"{name} has {len(a)} values but there are {n} {of}")


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure()
        if not isinstance(fig, Figure):
            fig = fig.get_figure(root=True) if fig is not None else None
        if not isinstance(fig, Figure):
            raise InputError("ax is not attached to a matplotlib Figure")
        return fig, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _direction(value: str | int | float, emotion: str) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0:
        return 1 if value > 0 else -1
    if isinstance(value, str) and value.lower() in _UP:
        return 1
    if isinstance(value, str) and value.lower() in _DOWN:
        return -1
    raise InputError(f"expected direction for {emotion!r} must be 'up' or 'down' (or +1/-1), "
                     f"got {value!r}")


# ------------------------------------------------------------------------------ figures
def plot_layer_accuracy(layers: Sequence[int], accuracy: ArrayLike | Mapping[str, ArrayLike], *,
                        chance: float | int | None = None, shuffled: ArrayLike | None = None,
                        chosen: int | None = None, title: str | None = None,
                        ylabel: str = "held-out accuracy", ax: Axes | None = None) -> Figure:
    """Validation accuracy per layer: one line (or one per method with a mapping), a dotted
    chance line, a dashed shuffled-label control, and the chosen layer marked."""
    xs = [int(v) for v in layers]
    series = dict(accuracy) if isinstance(accuracy, Mapping) else {"accuracy": accuracy}
    fig, ax = _new_axes(ax, (6.4, 3.8))
    top = 0.0
    for name, vals in series.items():
        a = _arr(vals, f"accuracy[{name!r}]", 1)
        _same_len(a, len(xs), f"accuracy[{name!r}]", "layers")
        ax.plot(xs, a, marker="o", ms=3, label=str(name))
        top = max(top, float(np.nanmax(a)) if a.size else 0.0)
    if shuffled is not None:
        s = _arr(shuffled, "shuffled", 1)
        _same_len(s, len(xs), "shuffled", "layers")
        ax.plot(xs, s, ls="--", color="0.45", marker=".", label="shuffled labels (control)")
        top = max(top, float(np.nanmax(s)) if s.size else 0.0)
    if chance is not None:
        ax.axhline(float(chance), ls=":", color="0.3", label=f"chance ({chance:.3g})")
    if chosen is not None:
        ax.axvline(int(chosen), color="tab:red", lw=0.8, alpha=0.6, label=f"layer {chosen}")
    if top <= 1.0:
        ax.set_ylim(0.0, 1.02)
    if len(xs) <= 16:
        ax.set_xticks(xs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Validation accuracy by layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_emotion_pca(coords: ArrayLike, labels: Sequence[str], *,
                     valence: ArrayLike | Mapping[str, float] | None = None,
                     explained: ArrayLike | None = None, pcs: tuple[int, int] = (1, 2),
                     annotate: bool = True, title: str | None = None, cmap: str = "RdYlGn",
                     ax: Axes | None = None) -> Figure:
    """Emotions on two PCs (1-based ``pcs`` of ``coords [emotion, pc]``), labelled by name.

    ``valence``: one rating per emotion (NaN = no rating) or ``{emotion: rating}``; rated points
    are coloured by it, the others grey. ``explained``: variance ratio per PC for the axes.
    """
    c = _arr(coords, "coords", 2)
    names = [str(x) for x in labels]
    _same_len(c, len(names), "coords", "labels")
    i, j = pcs[0] - 1, pcs[1] - 1
    if min(i, j) < 0 or max(i, j) >= c.shape[1]:
        raise InputError(f"pcs {pcs} out of range for coords with {c.shape[1]} PCs (1-based)")
    xs, ys = c[:, i], c[:, j]
    fig, ax = _new_axes(ax, (7.0, 6.0))
    if valence is not None:
        if isinstance(valence, Mapping):
            v = np.array([float(valence[n]) if n in valence else np.nan for n in names])
        else:
            v = _arr(valence, "valence", 1)
            _same_len(v, len(names), "valence", "labels")
        rated = np.isfinite(v)
        if (~rated).any():
            ax.scatter(xs[~rated], ys[~rated], c="lightgrey", edgecolors="grey",
                       label="no rating")
            ax.legend(fontsize=8, loc="best")
        if rated.any():
            sc = ax.scatter(xs[rated], ys[rated], c=v[rated], cmap=cmap, edgecolors="black",
                            linewidths=0.4)
            fig.colorbar(sc, ax=ax, label="valence (rating)")
    else:
        ax.scatter(xs, ys, c="tab:blue")
    if annotate:
        size = 8 if len(names) <= 40 else 6
        for x, y, name in zip(xs, ys, names):
            ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=size)
    ratio = None if explained is None else _arr(explained, "explained", 1)

    def axis(k: int) -> str:
        if ratio is not None and k < len(ratio):
            return f"PC{k + 1} ({ratio[k]:.1%} of variance)"
        return f"PC{k + 1}"

    ax.set_xlabel(axis(i))
    ax.set_ylabel(axis(j))
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_title(title or "Emotion directions, principal components")
    return fig


def plot_heatmap(matrix: ArrayLike, row_labels: Sequence[str] | None = None,
                 col_labels: Sequence[str] | None = None, *, title: str | None = None,
                 cmap: str = "RdBu_r", vmin: float | int | None = None, vmax: float | int | None = None,
                 center: float | int | None = None, annotate: bool | None = None, fmt: str = ".2f",
                 colorbar_label: str | None = None, xlabel: str | None = None,
                 ylabel: str | None = None, xrotation: float | int = 90,
                 outline: Sequence[tuple[int, int]] = (), ax: Axes | None = None) -> Figure:
    """A labelled matrix. ``center`` makes the colour scale symmetric around it (for diverging
    maps); ``annotate`` writes the values (default: when both sides have at most 16 cells);
    ``outline`` draws a box around the given ``(row, column)`` cells."""
    m = _arr(matrix, "matrix", 2)
    rows = [str(x) for x in (range(m.shape[0]) if row_labels is None else row_labels)]
    cols = [str(x) for x in (range(m.shape[1]) if col_labels is None else col_labels)]
    _same_len(m, len(rows), "matrix rows", "row labels")
    _same_len(m.T, len(cols), "matrix columns", "column labels")
    if center is not None and vmin is None and vmax is None:
        finite = m[np.isfinite(m)]
        half = float(np.abs(finite - center).max()) if finite.size else 1.0
        half = half or 1.0
        vmin, vmax = center - half, center + half
    w = min(16.0, 3.0 + 0.3 * len(cols))
    h = min(16.0, 2.5 + 0.3 * len(rows))
    fig, ax = _new_axes(ax, (w + 1.2, h))
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fs = 8 if max(len(rows), len(cols)) <= 30 else 5
    if len(cols) <= 100:
        ax.set_xticks(range(len(cols)), cols, rotation=xrotation, fontsize=fs)
    if len(rows) <= 100:
        ax.set_yticks(range(len(rows)), rows, fontsize=fs)
    if annotate is None:
        annotate = len(rows) <= 16 and len(cols) <= 16
    if annotate:
        for a in range(len(rows)):
            for b in range(len(cols)):
                val = m[a, b]
                if np.isfinite(val):
                    r, g, bl, _ = im.cmap(im.norm(val))
                    dark = 0.299 * r + 0.587 * g + 0.114 * bl < 0.5
                    ax.text(b, a, format(val, fmt), ha="center", va="center", fontsize=6.5,
                            color="white" if dark else "black")
    for a, b in outline:
        ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, lw=1.2, ec="black"))
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label=colorbar_label or "", shrink=0.8)
    if title:
        ax.set_title(title)
    return fig


def plot_cosine_matrix(matrix: ArrayLike, labels: Sequence[str], *, title: str | None = None,
                       order: Sequence[str] | None = None, ax: Axes | None = None) -> Figure:
    """Emotion x emotion cosine similarities on a fixed -1..+1 scale (e.g.
    ``emolens.geometry.cosine_matrix``). ``order`` re-orders rows and columns (e.g.
    ``emotion_clusters(...).order()``)."""
    labels = [str(x) for x in labels]
    if order is not None:
        m = _arr(matrix, "matrix", 2)
        _same_len(m, len(labels), "matrix rows", "labels")
        order = [str(x) for x in order]
        bad = sorted({e for e in order if e not in labels or order.count(e) > 1})
        if bad or len(order) != len(labels):
            raise InputError(f"order must list each of the {len(labels)} labels once; unknown, "
                             f"repeated or missing: {bad or sorted(set(labels) - set(order))}")
        idx = [labels.index(e) for e in order]
        matrix, labels = m[np.ix_(idx, idx)], order
    return plot_heatmap(matrix, labels, labels, vmin=-1.0, vmax=1.0, cmap="RdBu_r",
                        colorbar_label="cosine similarity", annotate=False, ax=ax,
                        title=title or "Cosine similarity between emotion directions")


def plot_layer_similarity(matrix: ArrayLike, layers: Sequence[int], *,
                          title: str | None = None, colorbar_label: str | None = None,
                          ax: Axes | None = None) -> Figure:
    """Layer x layer similarity of the emotion geometry (e.g. Pearson r of cosine matrices)."""
    m = _arr(matrix, "matrix", 2)
    finite = m[np.isfinite(m)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    return plot_heatmap(m, [str(v) for v in layers], [str(v) for v in layers], cmap="viridis",
                        vmin=lo, vmax=1.0, xlabel="layer", ylabel="layer", ax=ax, xrotation=0,
                        colorbar_label=colorbar_label or "similarity",
                        title=title or "Stability of emotion geometry across layers")


def plot_scenario_matrix(matrix: ArrayLike, scenario_emotions: Sequence[str],
                         readout_emotions: Sequence[str], *, zscore_columns: bool = False,
                         title: str | None = None, ax: Axes | None = None) -> Figure:
    """Implicit scenarios: rows are scenario emotions, columns readout emotions; the title gives
    the diagonal accuracy (rows whose top column matches) against chance 1/columns; the
    matching cells are outlined.

    ``zscore_columns`` standardises each readout emotion over the scenarios first (removes a
    probe's overall offset; the diagonal accuracy is computed on what is shown).
    """
    m = _arr(matrix, "matrix", 2)
    if zscore_columns:
        sd = m.std(axis=0, keepdims=True)
        m = (m - m.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    from emolens.readout.scenarios import diagonal_accuracy

    acc, hits, n = diagonal_accuracy(m, scenario_emotions, readout_emotions)
    head = title or "Implicit scenarios, read at the reply-opening token"
    full = (f"{head}\ndiagonal accuracy {acc:.2f} ({hits}/{n}; chance "
            f"{1 / len(readout_emotions):.2f})")
    cols = list(readout_emotions)
    diag = [(a, cols.index(e)) for a, e in enumerate(scenario_emotions) if e in cols]
    return plot_heatmap(m, scenario_emotions, readout_emotions, center=0.0, title=full,
                        outline=diag,
                        xlabel="readout emotion", ylabel="scenario emotion", ax=ax,
                        colorbar_label="score (z per column)" if zscore_columns else "score")


def plot_dose_response(values: ArrayLike, scores: Mapping[str, ArrayLike], *,
                       expected: Mapping[str, str | int | float] | None = None,
                       intervals: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
                       log_x: bool = False, xlabel: str = "template value",
                       ylabel: str = "emotion score", title: str | None = None,
                       ax: Axes | None = None) -> Figure:
    """Score against the value filled into a template, one line per emotion.

    ``expected``: ``{emotion: "up" | "down"}``; the legend gives the expected arrow, the observed
    one (sign of Spearman rho over the points) and rho; a mismatch is flagged. ``intervals``:
    ``{emotion: (low, high)}`` bands. ``log_x`` needs positive values.
    """
    x = _arr(values, "values", 1)
    if log_x and (x <= 0).any():
        raise InputError("log_x needs every template value > 0; got "
                         f"{x[x <= 0].tolist()}")
    order = np.argsort(x, kind="mergesort")
    fig, ax = _new_axes(ax, (6.4, 4.0))
    expected = dict(expected or {})
    for name in expected:
        if name not in scores:
            raise InputError(f"expected names {name!r}, which has no scores; emotions with "
                             f"scores: {sorted(scores)}")
    for name, vals in scores.items():
        y = _arr(vals, f"scores[{name!r}]", 1)
        _same_len(y, len(x), f"scores[{name!r}]", "template values")
        label = str(name)
        rho = spearman_r(x, y)
        obs = "↑" if rho > 0 else "↓" if rho < 0 else "–"
        ls = "-"
        if name in expected:
            d = _direction(expected[name], name)
            exp = "↑" if d > 0 else "↓"
            ok = np.isfinite(rho) and (rho > 0) == (d > 0) and rho != 0
            label += f": expected {exp}, observed {obs} (ρ={rho:+.2f})" + ("" if ok else " ✗")
        else:
            label += f" (ρ={rho:+.2f})"
            ls = "--"
        line = ax.plot(x[order], y[order], marker="o", ms=4, ls=ls, label=label)[0]
        if intervals and name in intervals:
            lo = _arr(intervals[name][0], f"intervals[{name!r}] low", 1)
            hi = _arr(intervals[name][1], f"intervals[{name!r}] high", 1)
            _same_len(lo, len(x), f"intervals[{name!r}]", "template values")
            _same_len(hi, len(x), f"intervals[{name!r}]", "template values")
            ax.fill_between(x[order], lo[order], hi[order], alpha=0.2, color=line.get_color())
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Dose-response", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    return fig


def plot_effects(labels: Sequence[str], effect: ArrayLike, ci_low: ArrayLike, ci_high: ArrayLike,
                 *, placebo: ArrayLike | None = None, placebo_ci_low: ArrayLike | None = None,
                 placebo_ci_high: ArrayLike | None = None, ylabel: str = "effect",
                 effect_label: str = "emotion direction", placebo_label: str = "placebo",
                 title: str | None = None, ax: Axes | None = None) -> Figure:
    """Bars of effects with their confidence intervals; with ``placebo`` (one per label) a grey
    hatched bar beside each, with its own interval when given."""
    names = [str(x) for x in labels]
    e, lo, hi = (_arr(effect, "effect", 1), _arr(ci_low, "ci_low", 1), _arr(ci_high, "ci_high", 1))
    for a, nm in ((e, "effect"), (lo, "ci_low"), (hi, "ci_high")):
        _same_len(a, len(names), nm, "labels")
    pos = np.arange(len(names), dtype=np.float64)
    width = 0.38 if placebo is not None else 0.6
    fig, ax = _new_axes(ax, (max(4.5, 1.0 + 0.7 * len(names)), 3.8))

    def err(v: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return np.stack([np.clip(v - low, 0, None), np.clip(high - v, 0, None)])

    shift = -width / 2 if placebo is not None else 0.0
    ax.bar(pos + shift, e, width, yerr=err(e, lo, hi), capsize=3, color="tab:blue",
           label=effect_label)
    if placebo is not None:
        p = _arr(placebo, "placebo", 1)
        _same_len(p, len(names), "placebo", "labels")
        perr = None
        if placebo_ci_low is not None and placebo_ci_high is not None:
            plo = _arr(placebo_ci_low, "placebo_ci_low", 1)
            phi = _arr(placebo_ci_high, "placebo_ci_high", 1)
            _same_len(plo, len(names), "placebo_ci_low", "labels")
            _same_len(phi, len(names), "placebo_ci_high", "labels")
            perr = err(p, plo, phi)
        ax.bar(pos + width / 2, p, width, yerr=perr, capsize=3, color="0.75", hatch="//",
               edgecolor="0.4", label=placebo_label)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(pos, names, rotation=30 if len(names) > 6 else 0, ha="right"
                  if len(names) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Effects with confidence intervals", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


__all__ = [
    "figure_to_data_uri", "figure_to_svg", "plot_cosine_matrix",
    "plot_dose_response", "plot_effects", "plot_emotion_pca", "plot_heatmap",
    "plot_layer_accuracy", "plot_layer_similarity", "plot_scenario_matrix",
]
