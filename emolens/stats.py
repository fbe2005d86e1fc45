"""Statistics over items (prompts, pairs, activities): intervals, p-values, correlations, Elo.

Every function resamples or permutes *items* (one number per prompt pair, activity, ...), is
seeded (the same call gives the same answer), and returns plain floats or an ``Estimate``
(value, interval, p-value, n). The percentile bootstrap and the sign-flip permutation test are
TransformerLens's (``transformer_lens.utilities.statistics``); this module adds the two-group
label permutation, a label-shuffle test of a classifier's accuracy, correlations with intervals
and p-values, and a soft Elo (Bradley-Terry) fit from pairwise preference probabilities.

What the numbers mean: a 95% bootstrap interval is the range of the statistic over resampled
sets of the same items; it says how much the estimate depends on which items were drawn, not how
it would change on another kind of item. A permutation p-value is the share of relabelled (or
sign-flipped) data sets whose statistic is at least as extreme as the observed one, under the
null that labels (or signs) are exchangeable. With few items (< 8) intervals are wide and skewed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformer_lens.utilities.statistics import bootstrap_ci as _tl_bootstrap_ci
from transformer_lens.utilities.statistics import derive_generator
from transformer_lens.utilities.statistics import (
    sign_flip_permutation_pvalue as _tl_sign_flip,
)

from emolens.errors import StatsError

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]
_ALTERNATIVES = ("two-sided", "greater", "less")

__all__ = [
    "EloFit",
    "Estimate",
    "accuracy_permutation_pvalue",
    "binomial_pvalue",
    "StatsError",
    "bootstrap_ci",
    "mean_estimate",
    "paired_difference",
    "pearson",
    "permutation_pvalue",
    "sign_flip_pvalue",
    "soft_elo",
    "spearman",
    "spearman_r",
    "two_group_difference",
]




def _vec(x: ArrayLike, name: str = "x") -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().to(torch.float64)
    else:
        t = torch.from_numpy(np.array(x, dtype=np.float64))
    if t.ndim != 1:
        raise StatsError(f"{name} must be one-dimensional (one value per item), got shape "
                         f"{tuple(t.shape)}; flatten it or pass one row")
    if t.numel() == 0:
        raise StatsError(f"{name} is empty: pass at least one value per item")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise StatsError(f"{name} holds {bad} non-finite value(s); drop or fix those items")
    return t


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise StatsError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


@dataclass(frozen=True)
class Estimate:
    """A statistic over ``n`` items with a percentile-bootstrap interval and a p-value.

    ``p_value`` tests the null named in ``null`` (``None`` when no test was run). ``low``/``high``
    are NaN when ``n < 2`` (no interval can be formed from one item).
    """

    value: float
    low: float
    high: float
    p_value: float | None
    n: int
    confidence: float = 0.95
    null: str = ""

    def excludes(self, x: float = 0.0) -> bool:
        """True when the interval lies entirely on one side of ``x``."""
        return bool(self.low > x or self.high < x)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    def __str__(self) -> str:
        p = "" if self.p_value is None else f", p={self.p_value:.3g}"
        return (f"{self.value:+.4g} [{self.low:+.4g}, {self.high:+.4g}] "
                f"({int(self.confidence * 100)}% CI, n={self.n}{p})")


# ---------------------------------------------------------------------------------- bootstrap
def bootstrap_ci(x: ArrayLike, *, statistic: str = "mean", confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (or median) of ``x`` over items, seeded."""
    t = _vec(x)
    if statistic not in ("mean", "median"):
        raise StatsError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1), got {confidence}")
    if t.numel() < 2:
        return float("nan"), float("nan")
    lo, hi = _tl_bootstrap_ci(t, statistic=statistic, confidence=confidence,
                              n_resamples=n_resamples,
                              generator=derive_generator(seed, "emolens-bootstrap", statistic))
    return float(lo), float(hi)


def sign_flip_pvalue(d: ArrayLike, *, n_permutations: int = 10000, seed: int = 0,
                     alternative: str = "two-sided") -> float:
    """Sign-flip permutation p-value that the mean of paired differences ``d`` is zero.

    Exact (all ``2**n`` sign patterns) for ``n <= 12``; Monte Carlo above that.
    """
    _check_alternative(alternative)
    t = _vec(d, "d")
    if bool((t == 0).all()):
        return 1.0
    p = _tl_sign_flip(t, n_permutations=n_permutations, alternative=alternative,
                      generator=derive_generator(seed, "emolens-signflip"))
    return float(p)


def _label_permutation_pvalue(x: torch.Tensor, y: torch.Tensor, n_permutations: int, seed: int,
                              alternative: str) -> float:
    data = torch.cat([x, y])
    n, nx = data.numel(), x.numel()
    observed = x.mean() - y.mean()
    gen = derive_generator(seed, "emolens-labelperm")
    hits = 0.0
    done = 0
    tol = abs(float(observed)) * 1e-9
    while done < n_permutations:
        count = min(1024, n_permutations - done)
        perm = torch.argsort(torch.rand(count, n, generator=gen), dim=1)
        shuffled = data[perm]
        null = shuffled[:, :nx].mean(1) - shuffled[:, nx:].mean(1)
        if alternative == "two-sided":
            hits += float((null.abs() >= observed.abs() - tol).sum())
        elif alternative == "greater":
            hits += float((null >= observed - tol).sum())
        else:
            hits += float((null <= observed + tol).sum())
        done += count
    return (hits + 1.0) / (n_permutations + 1.0)


def permutation_pvalue(x: ArrayLike, y: ArrayLike | None = None, *, paired: bool = False,
                       n_permutations: int = 10000, seed: int = 0,
                       alternative: str = "two-sided") -> float:
    """Permutation p-value.

    - ``y`` is None: sign-flip test that the mean of ``x`` is zero (``x`` are paired differences);
    - ``paired=True``: sign-flip test on ``x - y`` (same items measured twice);
    - otherwise: label-permutation test that two independent groups have equal means
      (statistic ``mean(x) - mean(y)``; ``(hits + 1) / (n_permutations + 1)``).
    """
    _check_alternative(alternative)
    if y is None:
        return sign_flip_pvalue(x, n_permutations=n_permutations, seed=seed,
                                alternative=alternative)
    tx, ty = _vec(x, "x"), _vec(y, "y")
    if paired:
        if tx.numel() != ty.numel():
            raise StatsError(f"paired test needs equal lengths, got {tx.numel()} and {ty.numel()}")
        return sign_flip_pvalue(tx - ty, n_permutations=n_permutations, seed=seed,
                                alternative=alternative)
    return _label_permutation_pvalue(tx, ty, n_permutations, seed, alternative)


def accuracy_permutation_pvalue(predictions: ArrayLike, labels: ArrayLike, *,
                                n_permutations: int = 10000, seed: int = 0) -> float:
    """One-sided permutation p-value that a classifier's accuracy beats chance.

    The statistic is accuracy, ``mean(predictions == labels)`` over items; the null shuffles
    ``labels`` across items (keeping both label and prediction frequencies), and the p-value is
    ``(hits + 1) / (n_permutations + 1)`` where ``hits`` counts shuffles with accuracy at least
    the observed one. The smallest possible value is ``1 / (n_permutations + 1)``.
    """
    pred = torch.as_tensor(np.asarray(predictions)).long().flatten()
    lab = torch.as_tensor(np.asarray(labels)).long().flatten()
    if pred.numel() == 0 or pred.numel() != lab.numel():
        raise StatsError(f"predictions and labels need one value per item each (and at least "
                         f"one item), got {pred.numel()} and {lab.numel()}")
    if n_permutations < 1:
        raise StatsError(f"n_permutations must be >= 1, got {n_permutations}")
    n = pred.numel()
    observed = int((pred == lab).sum())
    gen = derive_generator(seed, "emolens-accuracy-perm")
    chunk = max(1, min(1024, (1 << 22) // n))
    hits = done = 0
    while done < n_permutations:
        count = min(chunk, n_permutations - done)
        perm = torch.argsort(torch.rand(count, n, generator=gen), dim=1)
        hits += int(((lab[perm] == pred).sum(1) >= observed).sum())
        done += count
    return (hits + 1.0) / (n_permutations + 1.0)


def binomial_pvalue(k: int, n: int, p: float = 0.5, *, alternative: str = "two-sided"
                    ) -> float:
    """Exact binomial test of ``k`` successes in ``n`` trials at rate ``p``: ``"greater"``
    P(X >= k), ``"less"`` P(X <= k), ``"two-sided"`` the total probability of the outcomes no
    more likely than ``k`` (the sign test at ``p = 0.5``)."""
    _check_alternative(alternative)
    if not (0 <= k <= n and 0.0 <= p <= 1.0):
        raise StatsError(f"need 0 <= k <= n and 0 <= p <= 1, got k={k}, n={n}, p={p}")
    pmf = [math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(n + 1)]
    if alternative == "greater":
        out = sum(pmf[k:])
    elif alternative == "less":
        out = sum(pmf[:k + 1])
    else:
        out = sum(q for q in pmf if q <= pmf[k] * (1 + 1e-9))
    return min(1.0, out)


def mean_estimate(x: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 2000,
                  n_permutations: int = 10000, seed: int = 0) -> Estimate:
    """Mean of ``x`` over items with a bootstrap interval and a sign-flip p-value against 0."""
    t = _vec(x)
    lo, hi = bootstrap_ci(t, confidence=confidence, n_resamples=n_resamples, seed=seed)
    p = sign_flip_pvalue(t, n_permutations=n_permutations, seed=seed)
    return Estimate(float(t.mean()), lo, hi, p, int(t.numel()), confidence, "mean = 0 (sign flip)")


def paired_difference(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95,
                      n_resamples: int = 2000, n_permutations: int = 10000, seed: int = 0
                      ) -> Estimate:
    """Mean of ``a - b`` over paired items: bootstrap interval and sign-flip p-value."""
    ta, tb = _vec(a, "a"), _vec(b, "b")
    if ta.numel() != tb.numel():
        raise StatsError(f"paired_difference needs one a and one b per item, got {ta.numel()} "
                         f"and {tb.numel()}")
    est = mean_estimate(ta - tb, confidence=confidence, n_resamples=n_resamples,
                        n_permutations=n_permutations, seed=seed)
    return Estimate(est.value, est.low, est.high, est.p_value, est.n, confidence,
                    "mean(a - b) = 0 (paired sign flip)")


def two_group_difference(x: ArrayLike, y: ArrayLike, *, confidence: float = 0.95,
                         n_resamples: int = 2000, n_permutations: int = 10000, seed: int = 0
                         ) -> Estimate:
    """``mean(x) - mean(y)`` for two independent groups: stratified bootstrap interval
    (each group resampled on its own) and label-permutation p-value."""
    tx, ty = _vec(x, "x"), _vec(y, "y")
    gen = derive_generator(seed, "emolens-twogroup")
    ix = torch.randint(0, tx.numel(), (n_resamples, tx.numel()), generator=gen)
    iy = torch.randint(0, ty.numel(), (n_resamples, ty.numel()), generator=gen)
    draws = tx[ix].mean(1) - ty[iy].mean(1)
    alpha = (1 - confidence) / 2
    if tx.numel() < 2 or ty.numel() < 2:
        lo = hi = float("nan")
    else:
        lo, hi = float(torch.quantile(draws, alpha)), float(torch.quantile(draws, 1 - alpha))
    p = _label_permutation_pvalue(tx, ty, n_permutations, seed, "two-sided")
    return Estimate(float(tx.mean() - ty.mean()), lo, hi, p, int(tx.numel() + ty.numel()),
                    confidence, "equal means (label permutation)")


# ---------------------------------------------------------------------------------- correlation
def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson r along the last axis (NaN where either row is constant)."""
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    den = (xc.square().sum(-1) * yc.square().sum(-1)).sqrt()
    r = (xc * yc).sum(-1) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan"))).clamp(-1, 1)


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), along the last axis."""
    order = x.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(x)
    ar = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x)
    ranks.scatter_(-1, order, ar)
    if x.ndim == 1:
        uniq, inv = torch.unique(x, return_inverse=True)
        if uniq.numel() != x.numel():
            sums = torch.zeros(uniq.numel(), dtype=x.dtype).index_add_(0, inv, ranks)
            counts = torch.zeros(uniq.numel(), dtype=x.dtype).index_add_(
                0, inv, torch.ones_like(ranks))
            ranks = (sums / counts)[inv]
    return ranks


def spearman_r(x: ArrayLike, y: ArrayLike) -> float:
    """The Spearman rank correlation alone (average ranks for ties; NaN when x or y is
    constant or has fewer than 2 items): the point estimate of ``spearman``, without its
    interval and p-value."""
    tx, ty = _vec(x, "x"), _vec(y, "y")
    if tx.numel() != ty.numel():
        raise StatsError(f"x and y need one value per item each, got {tx.numel()} and {ty.numel()}")
    if tx.numel() < 2:
        return float("nan")
    return float(_pearson_rows(_rank(tx), _rank(ty)))


def _correlation(x: ArrayLike, y: ArrayLike, *, rank: bool, confidence: float,
                 n_resamples: int, n_permutations: int, seed: int) -> Estimate:
    tx, ty = _vec(x, "x"), _vec(y, "y")
    if tx.numel() != ty.numel():
        raise StatsError(f"x and y need one value per item each, got {tx.numel()} and {ty.numel()}")
    n = tx.numel()
    if n < 3:
        raise StatsError(f"a correlation needs at least 3 items, got {n}")
    f = (lambda a, b: _pearson_rows(_rank(a), _rank(b))) if rank else _pearson_rows
    r = float(f(tx, ty))
    name = "Spearman" if rank else "Pearson"
    if math.isnan(r):
        return Estimate(float("nan"), float("nan"), float("nan"), None, n, confidence,
                        f"{name} r undefined: x or y is constant")
    gen = derive_generator(seed, "emolens-corr-boot")
    idx = torch.randint(0, n, (n_resamples, n), generator=gen)
    if rank:
        boots = torch.stack([f(tx[i], ty[i]) for i in idx])
    else:
        boots = f(tx[idx], ty[idx])
    boots = boots[~boots.isnan()]
    alpha = (1 - confidence) / 2
    lo = float(torch.quantile(boots, alpha)) if boots.numel() else float("nan")
    hi = float(torch.quantile(boots, 1 - alpha)) if boots.numel() else float("nan")
    pgen = derive_generator(seed, "emolens-corr-perm")
    perm = torch.argsort(torch.rand(n_permutations, n, generator=pgen), dim=1)
    yr, xr = (_rank(ty), _rank(tx)) if rank else (ty, tx)
    null = _pearson_rows(xr.expand(n_permutations, n), yr[perm])
    hits = float((null.abs() >= abs(r) - 1e-12).sum())
    p = (hits + 1.0) / (n_permutations + 1.0)
    return Estimate(r, lo, hi, p, n, confidence, f"{name} r = 0 (permutation of y)")


def pearson(x: ArrayLike, y: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 2000,
            n_permutations: int = 5000, seed: int = 0) -> Estimate:
    """Pearson r with a bootstrap interval over items (pairs resampled together) and a
    permutation p-value (``y`` shuffled against ``x``)."""
    return _correlation(x, y, rank=False, confidence=confidence, n_resamples=n_resamples,
                        n_permutations=n_permutations, seed=seed)


def spearman(x: ArrayLike, y: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 1000,
             n_permutations: int = 5000, seed: int = 0) -> Estimate:
    """Spearman rank correlation, with the same interval and p-value as ``pearson``."""
    return _correlation(x, y, rank=True, confidence=confidence, n_resamples=n_resamples,
                        n_permutations=n_permutations, seed=seed)


# ---------------------------------------------------------------------------------- soft Elo
ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log-odds unit


@dataclass
class EloFit:
    """A Bradley-Terry fit to soft pairwise preferences, on the Elo scale.

    ``elo[i]``: item ``i``'s rating, centred to mean 0 over items (only differences are
    identified). An Elo gap ``D`` means ``P(i preferred to j) = 1 / (1 + 10 ** (-D / 400))``.
    ``position_bias``: Elo points added to whichever option is shown first (A), fitted jointly
    when requested (it absorbs a preference for the letter A, so that ratings reflect the
    items). ``loss``: final mean binary cross-entropy against the soft targets.
    """

    elo: torch.Tensor
    position_bias: float
    loss: float
    n_comparisons: int

    def predict(self, first: ArrayLike, second: ArrayLike) -> torch.Tensor:
        """P(first preferred) for item indices ``first``/``second`` shown in that order."""
        i = torch.as_tensor(np.asarray(first), dtype=torch.long)
        j = torch.as_tensor(np.asarray(second), dtype=torch.long)
        d = (self.elo[i] - self.elo[j] + self.position_bias) / ELO_SCALE
        return torch.sigmoid(d)


def soft_elo(n_items: int, first: ArrayLike, second: ArrayLike, p_first: ArrayLike, *,
             position_bias: bool = True, l2: float = 1e-4, max_iter: int = 500,
             anchor: Sequence[int] | None = None) -> EloFit:
    """Fit Elo ratings to soft preferences: ``p_first[k]`` = P(item ``first[k]`` preferred to
    ``second[k]``), e.g. the softmax of the A/B answer logits.

    Minimises the binary cross-entropy of ``sigmoid(s_first - s_second + b)`` against the soft
    targets (plus ``l2 * |s|^2``, which keeps ratings finite when an item always wins) with
    L-BFGS in float64; the problem is convex so the optimum is unique. Ratings are reported in
    Elo points, centred so that the items in ``anchor`` (default: all items) average 0.
    """
    i = torch.as_tensor(np.asarray(first), dtype=torch.long)
    j = torch.as_tensor(np.asarray(second), dtype=torch.long)
    p = _vec(p_first, "p_first")
    if not (i.numel() == j.numel() == p.numel()):
        raise StatsError(f"first, second and p_first need equal lengths, got {i.numel()}, "
                         f"{j.numel()}, {p.numel()}")
    if ((p < 0) | (p > 1)).any():
        raise StatsError("p_first must hold probabilities in [0, 1]")
    if n_items < 2:
        raise StatsError(f"soft_elo needs at least 2 items, got {n_items}")
    for name, idx in (("first", i), ("second", j)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_items):
            raise StatsError(f"{name} holds indices outside [0, {n_items})")
    if bool((i == j).any()):
        raise StatsError("an item is compared with itself; drop pairs with first == second")
    s = torch.zeros(n_items, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=position_bias)
    params = [s, b] if position_bias else [s]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = bce(s[i] - s[j] + b, p) + l2 * s.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(bce(s[i] - s[j] + b, p))
        ref = s[list(anchor)] if anchor is not None else s
        elo = (s - ref.mean()) * ELO_SCALE
    return EloFit(elo.float().detach(), float(b.detach()) * ELO_SCALE if position_bias else 0.0,
                  loss, int(p.numel()))
