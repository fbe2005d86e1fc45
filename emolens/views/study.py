"""Figures for the study experiments of round 2 (steering scores, directional ablation,
reply-emotion prediction). Like ``emolens.views.figures``: plain arrays in, a
``matplotlib.figure.Figure`` out, built without pyplot (nothing to close, no global state).

- ``plot_steering_score``: the harmonic-mean steering score per strength with its interval,
  the three judgements beside it, and a placebo line.
- ``plot_ablation_curves``: the behaviour-metric change and the KL on neutral prompts per
  candidate layer, with the KL limit and the chosen layer marked.
- ``plot_predictor_curves``: correlation with the reply's emotion per layer for two readout
  positions, with intervals.
- ``plot_speaker_cosines``: matching-emotion cosines of the speaker families with the story
  directions, per emotion, with the placebo and shuffled-label controls.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from emolens.errors import InputError
from emolens.views.figures import ArrayLike, _arr, _new_axes, _same_len


def plot_steering_score(strengths: ArrayLike, score: ArrayLike, low: ArrayLike, high: ArrayLike,
                        *, parts: Mapping[str, ArrayLike] | None = None,
                        placebo: ArrayLike | None = None, best: float | None = None,
                        title: str | None = None, ax: Axes | None = None) -> Figure:
    """Mean steering score (0-2) per strength with its interval; ``parts``: the mean of each
    judgement (concept, relevance, fluency) per strength, dashed; ``placebo``: the score of a
    random direction of equal norm; ``best``: the chosen strength (vertical line)."""
    x = _arr(strengths, "strengths", 1)
    y, lo, hi = _arr(score, "score", 1), _arr(low, "low", 1), _arr(high, "high", 1)
    for a, nm in ((y, "score"), (lo, "low"), (hi, "high")):
        _same_len(a, len(x), nm, "strengths")
    fig, ax = _new_axes(ax, (5.8, 3.8))
    order = np.argsort(x, kind="mergesort")
    line = ax.plot(x[order], y[order], marker="o", color="black", label="steering score")[0]
    ax.fill_between(x[order], lo[order], hi[order], alpha=0.2, color=line.get_color())
    for name, vals in (parts or {}).items():
        v = _arr(vals, f"parts[{name!r}]", 1)
        _same_len(v, len(x), f"parts[{name!r}]", "strengths")
        ax.plot(x[order], v[order], ls="--", marker=".", label=str(name))
    if placebo is not None:
        p = _arr(placebo, "placebo", 1)
        _same_len(p, len(x), "placebo", "strengths")
        ax.plot(x[order], p[order], color="0.5", ls=":", marker="x", label="random direction")
    if best is not None:
        ax.axvline(float(best), color="tab:red", lw=0.9, ls="-.", label=f"best {best:g}")
    ax.set_ylim(-0.05, 2.05)
    ax.set_xlabel("steering strength (x mean residual norm)")
    ax.set_ylabel("score (0-2)")
    ax.set_title(title or "Steering score (harmonic mean of concept, relevance, fluency)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    return fig


def plot_ablation_curves(layers: Sequence[int], change: ArrayLike, low: ArrayLike,
                         high: ArrayLike, kl: ArrayLike, *, kl_limit: float = 0.1,
                         chosen: int | None = None, placebo_change: ArrayLike | None = None,
                         placebo_kl: ArrayLike | None = None, metric: str = "metric",
                         title: str | None = None) -> Figure:
    """Two panels over candidate layers: the metric change under ablation (interval band,
    placebo dotted) and the KL on neutral prompts (log scale, the limit dashed)."""
    x = np.asarray([int(v) for v in layers], dtype=np.float64)
    c, lo, hi, k = (_arr(change, "change", 1), _arr(low, "low", 1), _arr(high, "high", 1),
                    _arr(kl, "kl", 1))
    for a, nm in ((c, "change"), (lo, "low"), (hi, "high"), (k, "kl")):
        _same_len(a, len(x), nm, "layers")
    if kl_limit <= 0:
        raise InputError(f"kl_limit must be > 0, got {kl_limit}")
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    a1, a2 = fig.subplots(2, 1, sharex=True)
    a1.plot(x, c, marker="o", color="tab:blue", label="ablate direction")
    a1.fill_between(x, lo, hi, alpha=0.2, color="tab:blue")
    if placebo_change is not None:
        p = _arr(placebo_change, "placebo_change", 1)
        _same_len(p, len(x), "placebo_change", "layers")
        a1.plot(x, p, color="0.5", ls=":", marker="x", label="ablate random direction")
    a1.axhline(0, color="0.3", lw=0.8)
    a1.set_ylabel(f"change in {metric}")
    a1.legend(fontsize=7.5)
    a1.grid(alpha=0.3)
    a2.plot(x, np.clip(k, 1e-6, None), marker="o", color="tab:orange", label="KL, direction")
    if placebo_kl is not None:
        pk = _arr(placebo_kl, "placebo_kl", 1)
        _same_len(pk, len(x), "placebo_kl", "layers")
        a2.plot(x, np.clip(pk, 1e-6, None), color="0.5", ls=":", marker="x", label="KL, random")
    a2.axhline(kl_limit, color="tab:red", ls="--", lw=0.9, label=f"limit {kl_limit:g}")
    a2.set_yscale("log")
    a2.set_ylabel("KL on neutral (nats/token)")
    a2.set_xlabel("layer of the direction")
    a2.legend(fontsize=7.5)
    a2.grid(alpha=0.3)
    if chosen is not None:
        for a in (a1, a2):
            a.axvline(chosen, color="tab:green", lw=1.0, ls="-.")
    a1.set_title(title or "Directional ablation by layer", fontsize=9)
    return fig


def plot_predictor_curves(layers: Sequence[int], curves: Mapping[str, tuple[ArrayLike, ArrayLike,
                                                                             ArrayLike]], *,
                          ylabel: str = "r with the reply's emotion", title: str | None = None,
                          ax: Axes | None = None) -> Figure:
    """One line per predictor: ``curves[name] = (r, low, high)`` per layer."""
    x = np.asarray([int(v) for v in layers], dtype=np.float64)
    fig, ax = _new_axes(ax, (5.8, 3.6))
    for name, (r, lo, hi) in curves.items():
        rv, lv, hv = (_arr(r, f"{name} r", 1), _arr(lo, f"{name} low", 1),
                      _arr(hi, f"{name} high", 1))
        for a, nm in ((rv, "r"), (lv, "low"), (hv, "high")):
            _same_len(a, len(x), f"{name} {nm}", "layers")
        line = ax.plot(x, rv, marker="o", label=str(name))[0]
        ax.fill_between(x, lv, hv, alpha=0.2, color=line.get_color())
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("layer of the predictor readout")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Which position predicts the reply's emotion", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    return fig


def plot_speaker_cosines(emotions: Sequence[str], matching: Mapping[str, ArrayLike], *,
                         placebo: Mapping[str, float] | None = None,
                         shuffled: Mapping[str, float] | None = None,
                         title: str | None = None, ax: Axes | None = None) -> Figure:
    """Grouped bars: per emotion, the matching-emotion cosine of each speaker family with the
    story directions (``matching[family]``, one value per emotion); per family, the mean of
    the random-direction placebo (dotted) and of the shuffled-label control (dashed) as
    horizontal lines in the family's colour."""
    names = [str(e) for e in emotions]
    if not matching:
        raise InputError("matching must give at least one family's cosines")
    x = np.arange(len(names), dtype=np.float64)
    fig, ax = _new_axes(ax, (max(5.8, 0.55 * len(names) + 2.5), 3.8))
    width = 0.8 / len(matching)
    top = 0.1
    for j, (fam, vals) in enumerate(matching.items()):
        v = _arr(vals, f"matching[{fam!r}]", 1)
        _same_len(v, len(names), f"matching[{fam!r}]", "emotions")
        top = max(top, float(np.nanmax(v)) if len(v) else top)
        bars = ax.bar(x - 0.4 + width * (j + 0.5), v, width, label=str(fam))
        color = bars.patches[0].get_facecolor() if bars.patches else None
        if placebo is not None and fam in placebo:
            ax.axhline(float(placebo[fam]), color=color, ls=":", lw=1.0,
                       label=f"{fam}: random directions")
        if shuffled is not None and fam in shuffled:
            ax.axhline(float(shuffled[fam]), color=color, ls="--", lw=1.0,
                       label=f"{fam}: shuffled labels")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("cosine with the story direction")
    ax.set_title(title or "Speaker directions vs story directions (matching emotion)",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.set_ylim(top=1.45 * top)  # room for the legend above the bars
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    return fig


__all__ = ["plot_ablation_curves", "plot_predictor_curves", "plot_speaker_cosines",
           "plot_steering_score"]
