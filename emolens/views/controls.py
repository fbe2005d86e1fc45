"""Figures for the geometry controls (``emolens.compare.controls``): plain arrays in, a
``matplotlib.figure.Figure`` out, built without pyplot.

- ``plot_learning_curves``: a measure against stories per emotion, one line per representation
  with its 2.5-97.5 % band over random draws; lexical baselines dashed.
- ``plot_similarity_ceiling``: per depth, RSA between two models on the same stories, on
  disjoint stories, and the noise ceiling from their split-half reliabilities.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from emolens.views.figures import ArrayLike, _arr, _new_axes, _same_len


def plot_learning_curves(sizes: ArrayLike, curves: Mapping[str, tuple[ArrayLike, ArrayLike,
                                                                       ArrayLike]], *,
                         dashed: Sequence[str] = (), reference: float | None = None,
                         labels: Sequence[str] | None = None,
                         ylabel: str = "test accuracy", title: str | None = None,
                         ax: Axes | None = None) -> Figure:
    """``curves[name] = (mean, low, high)`` against ``sizes`` (stories per emotion, shared by
    every curve; NaN where a representation has no value); ``dashed``: baselines drawn dashed;
    ``reference``: a dotted line (chance); ``labels``: tick labels (e.g. "all" for the point
    that uses every story)."""
    x = _arr(sizes, "sizes", 1)
    fig, ax = _new_axes(ax, (5.8, 3.8))
    for name, (mean, low, high) in curves.items():
        m, lo, hi = (_arr(v, f"curves[{name!r}]", 1) for v in (mean, low, high))
        for a in (m, lo, hi):
            _same_len(a, len(x), f"curves[{name!r}]", "sizes")
        ok = np.isfinite(m)
        line = ax.plot(x[ok], m[ok], marker="o", label=name,
                       ls="--" if name in dashed else "-")[0]
        band = ok & np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(x[band], lo[band], hi[band], alpha=0.15, color=line.get_color())
    if reference is not None:
        ax.axhline(float(reference), color="black", lw=0.7, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    ax.set_xticklabels(list(labels) if labels is not None else [str(int(v)) for v in x])
    ax.set_xlabel("training stories per emotion")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} against stories per emotion", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_similarity_ceiling(depths: ArrayLike, same: ArrayLike, disjoint: ArrayLike,
                            ceiling: ArrayLike, *, title: str | None = None,
                            ax: Axes | None = None) -> Figure:
    """RSA on the same stories, on disjoint stories, and the noise ceiling, per depth."""
    x = _arr(depths, "depths", 1)
    s, d, c = _arr(same, "same", 1), _arr(disjoint, "disjoint", 1), _arr(ceiling, "ceiling", 1)
    for a, nm in ((s, "same"), (d, "disjoint"), (c, "ceiling")):
        _same_len(a, len(x), nm, "depths")
    fig, ax = _new_axes(ax, (5.2, 3.6))
    ax.plot(x, s, marker="o", label="same stories")
    ax.plot(x, d, marker="s", label="disjoint stories")
    ax.plot(x, c, color="grey", ls="--", label="noise ceiling sqrt(rel_a rel_b)")
    ax.set_xlabel("relative depth (layer + 1) / n_layers")
    ax.set_ylabel("RSA (Spearman rho)")
    ax.set_ylim(min(0.0, float(np.nanmin(np.concatenate([s, d, c]))) - 0.05), 1.02)
    ax.set_title(title or "cross-model similarity", fontsize=9)
    ax.legend(fontsize=7)
    return fig
