"""Geometry of a set of emotion directions: PCA, affect correlation, clusters, layers, logit lens.

The checks of section 2 of the study ("Checks that the vectors mean what they say"), on any
``EmotionRegistry``:

- ``emotion_pca``: PCA over the emotion vectors of one layer (centred over emotions). In the
  study PC1 explains 26% of the variance and tracks valence, PC2 explains 15% and tracks arousal.
- ``affect_correlation``: Pearson r of PC1 and PC2 with human valence / arousal ratings, with a
  seeded percentile bootstrap over emotions and a label-permutation p-value (study: r = 0.81
  valence on 45 shared words, r = 0.66 arousal).
- ``emotion_clusters``: spherical (cosine) k-means with k-means++ seeding and restarts; the
  study uses k = 10.
- ``cosine_matrix`` and ``cross_layer_similarity``: the emotion x emotion similarity structure
  and how stable it is across layers (Pearson r between the off-diagonal entries of two layers'
  cosine matrices).
- ``logit_lens``: the tokens each direction promotes and suppresses when read through the final
  norm and the unembedding.

Figures are drawn by ``emolens.views`` from these results' arrays (``plot_emotion_pca``,
``plot_cosine_matrix``, ``plot_layer_similarity``); this module returns data only.

None of these is causal evidence: they show that the directions are organised like human affect
and point at fitting words, not that the model uses them (see ``emolens`` steering and patching).
Every result is a small dataclass with ``to_dict()`` (JSON-able) and ``_repr_html_``.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int

from emolens.errors import InputError, unknown_name_message
from emolens.registry import EmotionRegistry
from emolens.sites import Site

if TYPE_CHECKING:
    from emolens.compat import Model

LayerArg = int | str | Site | None
#: one emotion's human ratings: ``(valence, arousal)`` on any consistent scale.
Rating = Sequence[float | int]

MIN_SHARED_RATINGS = 5
_AFFECT = ("valence", "arousal")


def _resolve(registry: EmotionRegistry, layer: LayerArg) -> tuple[int, Site]:
    idx = registry.site_index(layer)
    return idx, registry.sites[idx]


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


# =============================================================================== cosine
def cosine_matrix(registry: EmotionRegistry, layer: LayerArg = None
                  ) -> Float[torch.Tensor, "emotion emotion"]:
    """Cosine similarity between every pair of emotion directions at ``layer``: ``[E, E]``.

    Rows and columns follow ``registry.emotions``; the diagonal is exactly 1.
    """
    m = registry.matrix(layer).double()
    cos = (m @ m.T).clamp(-1.0, 1.0)
    cos.fill_diagonal_(1.0)
    return cos.float()


# =============================================================================== PCA
@dataclass(frozen=True)
class EmotionPCA:
    """PCA of the emotion directions at one layer (``emotion_pca``).

    Attributes:
        components: ``[k, d_model]`` orthonormal principal axes (PC1 first), in the residual basis.
        explained_variance_ratio: ``[k]`` share of the total variance over emotions per PC,
            sorted descending; sums to 1 when every PC is kept.
        coords: ``[n_emotions, k]`` coordinates of each (centred) emotion vector on each PC.
        emotions: row names of ``coords``.
        layer, hook: the site the vectors come from.
        mean: ``[d_model]`` mean emotion vector that was subtracted before the PCA.
        explained_variance: ``[k]`` variance along each PC (unbiased, over emotions).
        orientation: per PC, the emotion whose coordinate was made positive to fix the sign.
    """

    components: Float[torch.Tensor, "k d_model"]
    explained_variance_ratio: Float[torch.Tensor, " k"]
    coords: Float[torch.Tensor, "emotion k"]
    emotions: list[str]
    layer: int
    hook: str
    mean: Float[torch.Tensor, " d_model"]
    explained_variance: Float[torch.Tensor, " k"]
    orientation: dict[str, str] = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def _pc(self, pc: int) -> int:
        if isinstance(pc, bool) or not isinstance(pc, int) or not 1 <= pc <= self.n_components:
            raise InputError(f"pc must be an int in 1..{self.n_components} (PC1 is 1), got {pc!r}")
        return pc - 1

    def coord(self, emotion: str, pc: int = 1) -> float:
        """Coordinate of ``emotion`` on PC ``pc`` (1-based)."""
        if emotion not in self.emotions:
            raise InputError(unknown_name_message("emotion", emotion, self.emotions))
        return float(self.coords[self.emotions.index(emotion), self._pc(pc)])

    def extremes(self, pc: int = 1, n: int = 5) -> tuple[list[str], list[str]]:
        """The ``n`` emotions at the positive end of PC ``pc`` and the ``n`` at its negative end."""
        col = self.coords[:, self._pc(pc)]
        order = torch.argsort(col, descending=True, stable=True).tolist()
        n = max(0, min(n, len(order)))
        return ([self.emotions[i] for i in order[:n]],
                [self.emotions[i] for i in reversed(order[len(order) - n:])])

    def project(self, vectors: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n k"]:
        """Coordinates of other ``d_model`` vectors on these PCs (centred with ``mean``)."""
        v = vectors.detach().to("cpu", torch.float32)
        return (v - self.mean) @ self.components.T

    def to_dict(self, include_components: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "layer": self.layer, "hook": self.hook, "n_emotions": len(self.emotions),
            "n_components": self.n_components,
            "explained_variance_ratio": [float(x) for x in self.explained_variance_ratio],
            "explained_variance": [float(x) for x in self.explained_variance],
            "orientation": dict(self.orientation),
            "coords": {e: [float(x) for x in row] for e, row in zip(self.emotions, self.coords)},
        }
        if include_components:
            d["components"] = self.components.tolist()
            d["mean"] = self.mean.tolist()
        return d

    def _repr_html_(self) -> str:
        e = html.escape
        rows = []
        for i in range(min(self.n_components, 6)):
            pos, neg = self.extremes(i + 1, 4)
            rows.append(
                f"<tr><td>PC{i + 1}</td><td>{float(self.explained_variance_ratio[i]):.1%}</td>"
                f"<td>{e(', '.join(pos))}</td><td>{e(', '.join(neg))}</td></tr>")
        return (f"<div><b>EmotionPCA</b> at <code>{e(self.hook)}</code> ({len(self.emotions)} "
                f"emotions, {self.n_components} PCs)<table><tr><th>PC</th><th>var.</th>"
                f"<th>+ end</th><th>- end</th></tr>{''.join(rows)}</table></div>")


def _check_orient(orient: Mapping[str, str], emotions: list[str], k: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, name in orient.items():
        ok = isinstance(key, str) and key.upper().startswith("PC") and key[2:].isdigit()
        if not ok or not 1 <= int(key[2:]) <= k:
            raise InputError(f"orient key {key!r} must be 'PC1'..'PC{k}' (this PCA keeps {k} PCs)")
        if name not in emotions:
            raise InputError(unknown_name_message("emotion", name, emotions,
                                                  f"orient={{{key!r}: ...}} needs a registry emotion"))
        out[int(key[2:]) - 1] = emotions.index(name)
    return out


def affect_orient(emotions: Sequence[str], norms: Mapping[str, Sequence[float]]
                  ) -> dict[str, str]:
    """The ``orient=`` of ``emotion_pca`` that reads PC1 as valence and PC2 as arousal:
    PC1 positive for the highest-valence emotion of ``emotions`` that ``norms`` rates
    (``emotion -> (valence, arousal)``), PC2 for the highest-arousal one; ``{}`` when none is
    rated."""
    rated = [e for e in emotions if e in norms]
    if not rated:
        return {}
    return {"PC1": max(rated, key=lambda e: norms[e][0]),
            "PC2": max(rated, key=lambda e: norms[e][1])}


def emotion_pca(registry: EmotionRegistry, layer: LayerArg = None,
                n_components: int | None = None, *,
                orient: Mapping[str, str] | None = None) -> EmotionPCA:
    """PCA of the unit emotion vectors at ``layer`` (default: the registry's default layer).

    The ``[n_emotions, d_model]`` matrix is centred (mean over emotions subtracted) and
    decomposed with ``torch.linalg.svd`` in float64. ``n_components`` defaults to every
    informative PC, ``min(n_emotions - 1, d_model)``.

    Sign convention (each PC's sign is arbitrary otherwise): by default the emotion with the
    largest absolute coordinate on a PC gets a positive coordinate (ties: the first in registry
    order). ``orient={"PC1": "happy", "PC2": "excited"}`` instead makes that emotion's coordinate
    positive on that PC, so PC1 reads as valence with pleasant emotions positive. PCs with equal
    variance are only defined up to a rotation; no sign rule fixes that.
    """
    _, site = _resolve(registry, layer)
    return vectors_pca(registry.matrix(site.layer), registry.emotions, n_components,
                       orient=orient, layer=site.layer, hook=site.name)


def vectors_pca(vectors: Float[torch.Tensor, "emotion d"], emotions: Sequence[str],
                n_components: int | None = None, *, orient: Mapping[str, str] | None = None,
                layer: int = -1, hook: str = "") -> EmotionPCA:
    """``emotion_pca`` of any ``[n_emotions, d]`` matrix of emotion vectors (rows in
    ``emotions`` order): a registry's directions, or those of a baseline that is not a model
    site (the TF-IDF vectors of ``emolens.compare.controls``). ``layer``/``hook`` label the
    result. Same centring, SVD and sign convention as ``emotion_pca``."""
    x = torch.as_tensor(vectors).double()
    names = list(emotions)
    if x.ndim != 2 or x.shape[0] != len(names):
        raise InputError(f"vectors must be [n_emotions, d] with one row per emotion "
                         f"({len(names)}), got {tuple(x.shape)}")
    n_e, d = x.shape
    if n_e < 2:
        raise InputError(f"PCA needs at least 2 emotions; the registry has {n_e}")
    max_k = min(n_e - 1, d)
    k = max_k if n_components is None else n_components
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise InputError(f"n_components must be an int in 1..{max_k} (n_emotions - 1 after "
                         f"centring, at most d_model), got {n_components!r}")
    mean = x.mean(0)
    xc = x - mean
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    total = float((s ** 2).sum())
    if total <= 1e-24:
        raise InputError(f"the {n_e} emotion vectors at {hook or 'these vectors'} are "
                         "identical: no variance to decompose")
    comps = vh[:k].clone()
    coords = xc @ comps.T
    anchors = _check_orient(orient or {}, names, k)
    orientation: dict[str, str] = {}
    for j in range(k):
        col = coords[:, j]
        a = anchors.get(j)
        if a is None:
            a = int(torch.argmax(col.abs()))  # first index among ties
        elif abs(float(col[a])) <= 1e-12 * max(1.0, float(col.abs().max())):
            raise InputError(f"orient: {names[a]!r} has coordinate 0 on PC{j + 1}, so it cannot "
                             "fix that PC's sign; choose an emotion far from the origin")
        if col[a] < 0:
            comps[j] = -comps[j]
            coords[:, j] = -coords[:, j]
        orientation[f"PC{j + 1}"] = names[a]
    var = (s[:k] ** 2) / (n_e - 1)
    return EmotionPCA(
        components=comps.float(), explained_variance_ratio=((s[:k] ** 2) / total).float(),
        coords=coords.float(), emotions=names, layer=layer, hook=hook,
        mean=mean.float(), explained_variance=var.float(), orientation=orientation)


# =============================================================================== affect ratings
@dataclass(frozen=True)
class AffectCorrelation:
    """Pearson r between PC coordinates and human affect ratings (``affect_correlation``).

    ``r``, ``ci_low``, ``ci_high`` and ``p_value`` are ``[2, 2]``: rows PC1, PC2; columns
    valence, arousal. The study's claims are the diagonal: PC1 ~ valence (r = 0.81 on 45 shared
    words) and PC2 ~ arousal (r = 0.66). Signs follow the PCA's orientation.

    The bootstrap resamples emotions with replacement holding the PCA fixed (fitted on all
    emotions), so the interval covers which words were rated, not the PCA fit itself. The
    p-value permutes the rating labels over emotions: ``(1 + #|r_null| >= |r|) / (1 + n_perm)``.
    ``norms`` records where the ratings came from (source, version, licence; see
    ``emolens.stimuli.norms``), ``{"source": "user-supplied ..."}`` for a plain mapping.
    """

    r: Float[torch.Tensor, "2 2"]
    ci_low: Float[torch.Tensor, "2 2"]
    ci_high: Float[torch.Tensor, "2 2"]
    p_value: Float[torch.Tensor, "2 2"]
    n: int
    emotions: list[str]
    missing: list[str]
    layer: int
    hook: str
    confidence: float
    n_boot: int
    n_perm: int
    seed: int
    norms: dict[str, Any] = field(default_factory=dict)

    @property
    def valence_r(self) -> float:
        """Pearson r of PC1 with valence."""
        return float(self.r[0, 0])

    @property
    def arousal_r(self) -> float:
        """Pearson r of PC2 with arousal."""
        return float(self.r[1, 1])

    @property
    def valence_ci(self) -> tuple[float, float]:
        return float(self.ci_low[0, 0]), float(self.ci_high[0, 0])

    @property
    def arousal_ci(self) -> tuple[float, float]:
        return float(self.ci_low[1, 1]), float(self.ci_high[1, 1])

    def to_dict(self) -> dict[str, Any]:
        cells = {}
        for i in range(2):
            for j, rating in enumerate(_AFFECT):
                cells[f"PC{i + 1}~{rating}"] = {
                    "r": float(self.r[i, j]), "ci": [float(self.ci_low[i, j]),
                                                     float(self.ci_high[i, j])],
                    "p_value": float(self.p_value[i, j])}
        return {"layer": self.layer, "hook": self.hook, "n": self.n,
                "valence_r": self.valence_r, "valence_ci": list(self.valence_ci),
                "arousal_r": self.arousal_r, "arousal_ci": list(self.arousal_ci),
                "cells": cells, "confidence": self.confidence, "n_boot": self.n_boot,
                "n_perm": self.n_perm, "seed": self.seed, "emotions": list(self.emotions),
                "missing": list(self.missing), "norms": dict(self.norms)}

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>PC{i + 1}</td>" + "".join(
                f"<td>{_fmt(float(self.r[i, j]))} [{_fmt(float(self.ci_low[i, j]))}, "
                f"{_fmt(float(self.ci_high[i, j]))}] p={float(self.p_value[i, j]):.3g}</td>"
                for j in range(2)) + "</tr>" for i in range(2))
        return (f"<div><b>AffectCorrelation</b> at <code>{html.escape(self.hook)}</code>: "
                f"{self.n} shared emotions, {self.confidence:.0%} bootstrap CI ({self.n_boot} "
                f"resamples), permutation p ({self.n_perm})<table><tr><th></th><th>valence</th>"
                f"<th>arousal</th></tr>{rows}</table></div>")


def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson r between every column of ``x [..., n, a]`` and of ``y [..., n, b]``: ``[..., a, b]``."""
    xc = x - x.mean(-2, keepdim=True)
    yc = y - y.mean(-2, keepdim=True)
    cov = xc.transpose(-1, -2) @ yc
    sx = xc.pow(2).sum(-2).sqrt()
    sy = yc.pow(2).sum(-2).sqrt()
    return cov / (sx[..., :, None] * sy[..., None, :])


def _ratings_table(ratings: Mapping[str, Rating], names: list[str]) -> torch.Tensor:
    rows = []
    for name in names:
        val = ratings[name]
        try:
            pair = [float(v) for v in val]
        except (TypeError, ValueError) as err:
            raise InputError(f"ratings[{name!r}] = {val!r} must be (valence, arousal) numbers"
                             ) from err
        if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
            raise InputError(f"ratings[{name!r}] = {val!r} must be two finite numbers "
                             "(valence, arousal)")
        rows.append(pair)
    return torch.tensor(rows, dtype=torch.float64)


def affect_correlation(pca: EmotionPCA, ratings: Mapping[str, Rating], *, n_boot: int = 2000,
                       n_perm: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> AffectCorrelation:
    """Correlate PC1/PC2 coordinates with human (valence, arousal) ratings.

    Only emotions present in both ``pca.emotions`` and ``ratings`` are used (at least 5). Every
    PC is correlated with every rating, so the 2 x 2 table shows which PC tracks which. Intervals
    are seeded percentile bootstraps over emotions (``n_boot`` resamples); p-values come from
    ``n_perm`` permutations of the rating labels. Both are deterministic given ``seed``.
    """
    from transformer_lens.utilities.statistics import derive_generator

    from emolens.stimuli.norms import norms_info

    if pca.n_components < 2:
        raise InputError("affect_correlation needs PC1 and PC2; the PCA kept 1 component "
                         "(use n_components >= 2)")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1 or n_perm < 1:
        raise InputError(f"n_boot and n_perm must be >= 1, got {n_boot}, {n_perm}")
    shared = [e for e in pca.emotions if e in ratings]
    missing = [e for e in pca.emotions if e not in ratings]
    if len(shared) < MIN_SHARED_RATINGS:
        raise InputError(
            f"only {len(shared)} emotion(s) have ratings ({shared}); affect_correlation needs at "
            f"least {MIN_SHARED_RATINGS}. Ratings keys must match registry names exactly, e.g. "
            f"{pca.emotions[:5]}")
    y = _ratings_table(ratings, shared)
    if (y.std(0) == 0).any():
        flat = [_AFFECT[j] for j in range(2) if float(y[:, j].std()) == 0]
        raise InputError(f"{flat} ratings are constant over the {len(shared)} shared emotions: "
                         "no correlation is defined")
    idx = torch.tensor([pca.emotions.index(e) for e in shared])
    x = pca.coords[idx, :2].double()
    n = len(shared)
    r = _pearson_rows(x, y)

    boot_idx = torch.randint(0, n, (n_boot, n), generator=derive_generator(seed, "affect", "boot"))
    draws = _pearson_rows(x[boot_idx], y[boot_idx])  # [n_boot, 2, 2]; nan where a draw is flat
    alpha = (1.0 - confidence) / 2
    low = torch.nanquantile(draws, alpha, dim=0)
    high = torch.nanquantile(draws, 1.0 - alpha, dim=0)

    gen = derive_generator(seed, "affect", "perm")
    perm = torch.argsort(torch.rand(n_perm, n, generator=gen, dtype=torch.float64), dim=-1)
    null = _pearson_rows(x.expand(n_perm, n, 2), y[perm])
    tol = r.abs() * 1e-12
    hits = (null.abs() >= r.abs() - tol).sum(0).double()
    p = (hits + 1.0) / (n_perm + 1.0)
    return AffectCorrelation(
        r=r.float(), ci_low=low.float(), ci_high=high.float(), p_value=p.float(), n=n,
        emotions=shared, missing=missing, layer=pca.layer, hook=pca.hook,
        confidence=float(confidence), n_boot=int(n_boot), n_perm=int(n_perm), seed=int(seed),
        norms=norms_info(ratings))


# =============================================================================== clusters
@dataclass(frozen=True)
class EmotionClusters:
    """Spherical k-means over the unit emotion vectors (``emotion_clusters``).

    Attributes:
        clusters: lists of emotion names, largest cluster first (ties: the cluster whose first
            member comes first in registry order); members in registry order.
        labels: ``[n_emotions]`` cluster index of each emotion (indexes ``clusters``).
        centroids: ``[k, d_model]`` unit mean direction of each cluster.
        inertia: sum over emotions of ``1 - cos(emotion, its centroid)`` (lower is tighter).
    """

    clusters: list[list[str]]
    labels: Int[torch.Tensor, " emotion"]
    centroids: Float[torch.Tensor, "k d_model"]
    inertia: float
    emotions: list[str]
    k: int
    layer: int
    hook: str
    seed: int
    n_init: int

    def cluster_of(self, emotion: str) -> list[str]:
        """The cluster containing ``emotion``."""
        if emotion not in self.emotions:
            raise InputError(unknown_name_message("emotion", emotion, self.emotions))
        return list(self.clusters[int(self.labels[self.emotions.index(emotion)])])

    def order(self) -> list[str]:
        """Emotions grouped by cluster (for ``emolens.views.plot_cosine_matrix(..., order=clusters.order())``)."""
        return [e for c in self.clusters for e in c]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "hook": self.hook, "k": self.k, "seed": self.seed,
                "n_init": self.n_init, "inertia": self.inertia,
                "clusters": [list(c) for c in self.clusters]}

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{i}</td><td>{len(c)}</td><td>{html.escape(', '.join(c))}</td></tr>"
                       for i, c in enumerate(self.clusters))
        return (f"<div><b>EmotionClusters</b> k={self.k} at <code>{html.escape(self.hook)}</code>"
                f" (inertia {self.inertia:.3f}, seed {self.seed}, {self.n_init} restarts)"
                f"<table><tr><th>#</th><th>size</th><th>emotions</th></tr>{rows}</table></div>")


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on unit rows with squared chordal distance ``2 - 2 cos``."""
    n = x.shape[0]
    chosen = [int(torch.randint(0, n, (1,), generator=gen))]
    dist = (1.0 - x @ x[chosen[0]]).clamp_min(0.0)
    for _ in range(1, k):
        w = dist.clone()
        w[chosen] = 0.0
        if float(w.sum()) <= 0.0:  # every remaining point coincides with a centre
            free = [i for i in range(n) if i not in chosen]
            nxt = free[int(torch.randint(0, len(free), (1,), generator=gen))]
        else:
            nxt = int(torch.multinomial(w, 1, generator=gen))
        chosen.append(nxt)
        dist = torch.minimum(dist, (1.0 - x @ x[nxt]).clamp_min(0.0))
    return x[chosen].clone()


def _spherical_lloyd(x: torch.Tensor, centres: torch.Tensor, max_iter: int
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
    n, k = x.shape[0], centres.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(max_iter):
        sims = x @ centres.T
        new = sims.argmax(1)
        counts = torch.bincount(new, minlength=k)
        for j in (counts == 0).nonzero().flatten().tolist():  # re-seed an empty cluster
            own = sims[torch.arange(n), new]
            movable = counts[new] > 1
            cand = torch.where(movable, own, torch.full_like(own, math.inf))
            i = int(torch.argmin(cand))
            counts[new[i]] -= 1
            new[i] = j
            counts[j] = 1
            centres[j] = x[i]
        if torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            s = x[labels == j].sum(0)
            norm = s.norm()
            if norm > 1e-12:
                centres[j] = s / norm
    sims = x @ centres.T
    inertia = float((1.0 - sims[torch.arange(n), labels]).sum())
    return labels, centres, inertia


def emotion_clusters(registry: EmotionRegistry, layer: LayerArg = None, k: int = 10,
                     seed: int = 0, *, n_init: int = 10, max_iter: int = 300) -> EmotionClusters:
    """Cluster the unit emotion vectors at ``layer`` by cosine similarity (spherical k-means).

    Each of ``n_init`` restarts seeds with k-means++ (distance ``1 - cos``) from one
    ``torch.Generator`` seeded with ``seed``, then alternates assignment to the most similar
    centroid and re-normalised member means; the restart with the lowest inertia wins. Clusters
    are reported in a canonical order, so the result depends only on ``seed`` and the data.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    if n_init < 1 or max_iter < 1:
        raise InputError(f"n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
    _, site = _resolve(registry, layer)
    x = registry.matrix(site.layer).double()
    n = x.shape[0]
    if k > n:
        raise InputError(f"k={k} exceeds the number of emotions ({n}); choose k <= {n}")
    gen = torch.Generator().manual_seed(int(seed))
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(n_init):
        res = _spherical_lloyd(x, _kmeans_pp(x, k, gen), max_iter)
        if best is None or res[2] < best[2] - 1e-12:
            best = res
    assert best is not None
    labels, centres, inertia = best
    members = [(labels == j).nonzero().flatten().tolist() for j in range(k)]
    order = sorted(range(k), key=lambda j: (-len(members[j]), members[j][0] if members[j] else n))
    remap = torch.empty(k, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(k)
    names = registry.emotions
    return EmotionClusters(
        clusters=[[names[i] for i in members[j]] for j in order], labels=remap[labels],
        centroids=centres[order].float(), inertia=inertia, emotions=names, k=k,
        layer=site.layer, hook=site.name, seed=int(seed), n_init=int(n_init))


# =============================================================================== layers
@dataclass(frozen=True)
class CrossLayerSimilarity:
    """How alike the emotion similarity structure is between layers (``cross_layer_similarity``).

    ``matrix[i, j]`` is the Pearson r between the off-diagonal entries of the emotion x emotion
    cosine matrices at ``layers[i]`` and ``layers[j]``; 1 on the diagonal. It is invariant to any
    rotation of either layer's basis, so it compares geometry, not coordinates.
    """

    matrix: Float[torch.Tensor, "layer layer"]
    layers: list[int]
    hooks: list[str]
    n_emotions: int

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "hooks": list(self.hooks),
                "n_emotions": self.n_emotions, "matrix": self.matrix.tolist()}

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{v}</th>" for v in self.layers)
        rows = "".join(f"<tr><th>{a}</th>" + "".join(f"<td>{float(v):.2f}</td>" for v in row)
                       + "</tr>" for a, row in zip(self.layers, self.matrix))
        return (f"<div><b>CrossLayerSimilarity</b> ({self.n_emotions} emotions; Pearson r of "
                f"off-diagonal cosines)<table><tr><th></th>{head}</tr>{rows}</table></div>")


def cross_layer_similarity(registry: EmotionRegistry, layers: Sequence[LayerArg] | None = None
                           ) -> CrossLayerSimilarity:
    """Pearson r between the off-diagonal cosine similarities of every pair of ``layers``.

    ``layers`` defaults to every layer of the registry (any form the registry accepts: layer
    numbers or hook names). Needs at least 3 emotions (3 pairs) and non-constant similarities.
    """
    specs = registry.layers if layers is None else list(layers)
    if not specs:
        raise InputError("layers is empty; pass at least one layer")
    idx = [registry.site_index(s) for s in specs]
    sites = [registry.sites[i] for i in idx]
    n_e = len(registry.emotions)
    if n_e < 3:
        raise InputError(f"cross_layer_similarity needs at least 3 emotions, the registry has {n_e}")
    t = registry.tensor()[idx].double()
    cos = t @ t.transpose(1, 2)
    iu = torch.triu_indices(n_e, n_e, offset=1)
    vecs = cos[:, iu[0], iu[1]]  # [L, pairs]
    flat = (vecs.std(1) <= 1e-12).nonzero().flatten().tolist()
    if flat:
        raise InputError(f"the cosine similarities at {[sites[i].name for i in flat]} are all "
                         "equal, so no correlation with other layers is defined")
    m = torch.corrcoef(vecs) if len(idx) > 1 else torch.ones(1, 1, dtype=torch.float64)
    m = m.clamp(-1.0, 1.0)
    m.fill_diagonal_(1.0)
    return CrossLayerSimilarity(matrix=m.float(), layers=[s.layer for s in sites],
                                hooks=[s.name for s in sites], n_emotions=n_e)


# =============================================================================== logit lens
_READOUTS = ("direction", "state")


def _direction_logits(model: Model, dirs: torch.Tensor) -> torch.Tensor:
    """``(ln_final(v) - ln_final(0)) @ W_U`` per row: the norm's linear action, no biases."""
    from transformer_lens.utilities.quantization import require_readable_weight

    w_u = require_readable_weight(model.W_U, operation="read emotion directions through W_U",
                                  owner=model)
    v = dirs.to(device=w_u.device, dtype=w_u.dtype)
    norm_type = getattr(model.cfg, "normalization_type", None)
    ln = getattr(model, "ln_final", None)
    if norm_type is not None:
        if not isinstance(ln, torch.nn.Module):
            raise InputError(f"the model declares normalization_type={norm_type!r} but has no "
                             "ln_final module, so directions cannot be read through its final "
                             "norm; use readout='state' or a model with ln_final")
        y = ln(v.unsqueeze(0)).squeeze(0) - ln(torch.zeros_like(v[:1]).unsqueeze(0)).squeeze(0)
    else:
        y = v
    return (y @ w_u).float()


def logit_lens(model: Model, registry: EmotionRegistry, layer: LayerArg = None, k: int = 10,
               emotions: Sequence[str] | None = None, *, readout: str = "direction",
               strict: bool = True) -> pd.DataFrame:
    """Top-``k`` tokens each emotion direction promotes and suppresses through the unembedding.

    Returns a DataFrame with one row per (emotion, rank): ``emotion, rank, promoted,
    promoted_logit, suppressed, suppressed_logit, promoted_id, suppressed_id``; ``rank`` is
    1-based (1 = strongest), ``suppressed`` lists the most negative logits.

    readout:
        ``"direction"`` (default): the unit direction ``v`` is treated as a residual state and
        passed through the model's own final norm module, minus the norm of the zero vector
        (which removes a LayerNorm bias), then multiplied by ``W_U`` without ``b_U``. For
        RMSNorm this is exactly ``sqrt(d_model) * (w * v) @ W_U`` (norm weight times direction,
        then the unembedding); for LayerNorm ``v`` is also centred, as the norm would. Token
        order equals that of ``(w * v) @ W_U``; logits are in units of a residual state of unit
        RMS along ``v``. Bias terms are dropped because they are the same for every direction
        and would put the same tokens on top of every list.
        ``"state"``: TransformerLens's ``logit_readout`` (final norm with recomputed statistics,
        ``W_U``, ``b_U`` and the adapter's output transform, e.g. a Gemma softcap): what the
        model would predict from a residual stream equal to ``v``.

    The registry must come from this model (``registry.check_model(model, strict=strict)``).
    """
    if readout not in _READOUTS:
        raise InputError(f"readout must be one of {_READOUTS}, got {readout!r}")
    registry.check_model(model, strict=strict)
    d_vocab = int(model.W_U.shape[1])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_vocab:
        raise InputError(f"k must be an int in 1..{d_vocab} (the vocabulary size), got {k!r}")
    if isinstance(emotions, str):
        raise InputError(f"emotions must be a list of names, got the string {emotions!r}")
    names = registry.emotions if emotions is None else list(emotions)
    if not names:
        raise InputError("emotions is empty; pass at least one emotion name (or None for all)")
    _, site = _resolve(registry, layer)
    dirs = torch.stack([registry.vector(e, site.layer) for e in names])
    tok = model.tokenizer
    rows: list[dict[str, Any]] = []
    chunk = 64
    with torch.no_grad():
        for start in range(0, len(names), chunk):
            part = dirs[start:start + chunk]
            if readout == "direction":
                logits = _direction_logits(model, part)
            else:
                from transformer_lens.tools.analysis.logit_lens import logit_readout

                w_u = model.W_U
                res = logit_readout(model, part.to(device=w_u.device, dtype=w_u.dtype))
                logits = res.values.float()
            logits = logits.cpu()
            top = torch.topk(logits, k, dim=-1)
            bot = torch.topk(-logits, k, dim=-1)
            for r_i, name in enumerate(names[start:start + chunk]):
                for rank in range(k):
                    pid, sid = int(top.indices[r_i, rank]), int(bot.indices[r_i, rank])
                    rows.append({
                        "emotion": name, "rank": rank + 1,
                        "promoted": tok.decode([pid]), "promoted_logit": float(top.values[r_i, rank]),
                        "suppressed": tok.decode([sid]),
                        "suppressed_logit": -float(bot.values[r_i, rank]),
                        "promoted_id": pid, "suppressed_id": sid})
    df = pd.DataFrame(rows, columns=["emotion", "rank", "promoted", "promoted_logit",
                                     "suppressed", "suppressed_logit", "promoted_id",
                                     "suppressed_id"])
    df.attrs.update({"layer": site.layer, "hook": site.name, "readout": readout, "k": k})
    return df


__all__ = [
    "AffectCorrelation", "CrossLayerSimilarity", "EmotionClusters", "EmotionPCA",
    "affect_correlation", "affect_orient", "cosine_matrix", "cross_layer_similarity", "emotion_clusters",
    "emotion_pca", "logit_lens",
]
