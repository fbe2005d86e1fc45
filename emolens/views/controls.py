"""Figures for the geometry controls (``emolens.compare.controls``): plain arrays in, a
``matplotlib.figure.Figure`` out, built without pyplot.

- ``plot_learning_curves``: a measure against stories per emotion, one line per representation
  with its 2.5-97.5 % band over random draws; lexical baselines dashed.
- ``plot_similarity_ceiling``: per depth, RSA between two models on the same stories, on
  disjoint stories, and the noise ceiling from their split-half reliabilities.
- ``similarity_ceiling_figures(result.cross)`` and ``learning_curve_figures(result.curves,
  result.settings)``: those two drawn from a ``GeometryControls``' plain dicts, ``{caption:
  Figure}`` in the order the controls report shows them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def similarity_ceiling_figures(cross: Sequence[Mapping[str, Any]]) -> dict[str, Figure]:
    """``plot_similarity_ceiling`` of every model-model entry of ``GeometryControls.cross``
    (``{"a", "b", "kind", "by_depth": [{"depth", "same_stories", "disjoint_stories",
    "noise_ceiling"}, ...]}``), keyed ``"a vs b"``; missing values are NaN."""
    out: dict[str, Figure] = {}
    for c in cross:
        if c["kind"] != "model-model":
            continue
        bd = c["by_depth"]
        name = f"{c['a']} vs {c['b']}"
        out[name] = plot_similarity_ceiling(
            [_nan(d["depth"]) for d in bd], [_nan(d["same_stories"]["mean"]) for d in bd],
            [_nan(d["disjoint_stories"]["mean"]) for d in bd],
            [_nan(d["noise_ceiling"]) for d in bd], title=name)
    return out


def _size(point: Mapping[str, Any], sizes: Sequence[int | None]) -> float:
    """x position of a curve point: its size; for "all", the most stories any emotion has, or
    one step (x2) beyond the largest drawn size when that is not larger (the tick says "all")."""
    if point["stories_per_emotion"] is not None:
        return float(point["stories_per_emotion"])
    drawn = [s for s in sizes if s is not None and s < point.get("most_per_emotion", 0)]
    most = float(point.get("most_per_emotion") or 0)
    return most if drawn and most > max(drawn) else float(max(drawn, default=1) * 2)


def learning_curve_figures(curves: Sequence[Mapping[str, Any]],
                           settings: Mapping[str, Any]) -> dict[str, Figure]:
    """``plot_learning_curves`` of ``GeometryControls.curves`` (``settings``: its
    ``settings``, for the emotion count and the drawn sizes): test accuracy (chance dotted),
    PC1 ~ valence r and PC2 ~ arousal r (0 dotted) of the single representations, embeddings
    and TF-IDF dashed, then the cross-model RSA of the pairs; keyed by caption, a figure only
    where there are curves of that kind."""
    out: dict[str, Figure] = {}
    singles = [c for c in curves if "pair" not in c]
    if singles:
        sizes = [_size(p, settings["sizes"]) for p in singles[0]["points"]]
        lexical = [c["name"] for c in singles if "(embedding)" in c["name"]
                   or c["name"] == "TF-IDF"]
        for key, label in (("test_accuracy", "test accuracy"),
                           ("PC1_valence_r", "PC1 ~ valence r"),
                           ("PC2_arousal_r", "PC2 ~ arousal r")):
            lines = {c["name"]: ([_nan(p[key]["mean"]) for p in c["points"]],
                                 [_nan(p[key]["range"][0]) for p in c["points"]],
                                 [_nan(p[key]["range"][1]) for p in c["points"]])
                     for c in singles}
            chance = 1.0 / len(settings["emotions"]) if key == "test_accuracy" else 0.0
            out[label] = plot_learning_curves(sizes, lines, dashed=lexical, reference=chance,
                                              ylabel=label,
                                              labels=[p["label"] for p in singles[0]["points"]])
    pairs = [c for c in curves if "pair" in c]
    if pairs:
        sizes = [_size(p, settings["sizes"]) for p in pairs[0]["points"]]
        lines = {c["name"]: ([_nan(p["rsa"]["mean"]) for p in c["points"]],
                             [_nan(p["rsa"]["range"][0]) for p in c["points"]],
                             [_nan(p["rsa"]["range"][1]) for p in c["points"]])
                 for c in pairs}
        out["cross-model RSA on the same drawn stories"] = plot_learning_curves(
            sizes, lines, ylabel="RSA between models",
            labels=[p["label"] for p in pairs[0]["points"]])
    return out
