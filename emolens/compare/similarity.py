"""Representational similarity of emotion geometry between two models.

Each model's geometry is the ``[n, n]`` cosine-similarity matrix of its unit emotion vectors at
one layer (the registry's default). The RSA score is the Spearman correlation of the two
matrices' off-diagonal entries (upper triangle: each emotion pair once), over the emotions both
models have. It does not need the models to share a residual basis or a width.

- interval: percentile bootstrap over emotions (the emotion set is resampled with replacement;
  pairs of an emotion with its own copy are dropped), seeded;
- p-value: the emotion labels of one matrix are permuted (rows and columns together),
  ``(1 + #|rho_null| >= |rho|) / (1 + n_perm)`` (two-sided).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float

from emolens.errors import InputError

MIN_RSA_EMOTIONS = 4


def cosine_matrix(vectors: Float[torch.Tensor, "emotion d_model"]
                  ) -> Float[torch.Tensor, "emotion emotion"]:
    """Cosine similarity of every pair of rows (float64)."""
    v = vectors.double()
    v = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return v @ v.T


def _rank_rows(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dim (``emolens.stats._rank``: ties share their mean rank in 1-D;
    cosine similarities of real vectors practically never tie)."""
    from emolens.stats import _rank

    return _rank(x)


def _pearson_last(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _upper(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1)
    return m[..., i, j]


def rsa_rho(sim_a: Float[torch.Tensor, "emotion emotion"],
            sim_b: Float[torch.Tensor, "emotion emotion"]) -> float:
    """The RSA score alone: Spearman rho of the two matrices' upper triangles (each emotion
    pair once), no interval (``rsa`` adds the bootstrap and the permutation p)."""
    if sim_a.shape != sim_b.shape or sim_a.ndim != 2 or sim_a.shape[0] != sim_a.shape[1]:
        raise InputError(f"similarity matrices must be square and the same shape, got "
                         f"{tuple(sim_a.shape)} and {tuple(sim_b.shape)}")
    ua, ub = _upper(sim_a.double()), _upper(sim_b.double())
    return float(_pearson_last(_rank_rows(ua), _rank_rows(ub)))


def partial_rsa_rho(sim_a: Float[torch.Tensor, "emotion emotion"],
                    sim_b: Float[torch.Tensor, "emotion emotion"],
                    sim_c: Float[torch.Tensor, "emotion emotion"]) -> float:
    """Partial Spearman rho of ``sim_a`` and ``sim_b`` given ``sim_c`` (each over the upper
    triangle): how much of two geometries' agreement is left once a third (a lexical baseline)
    is accounted for, ``(r_ab - r_ac r_bc) / sqrt((1 - r_ac^2)(1 - r_bc^2))``."""
    r_ab, r_ac, r_bc = rsa_rho(sim_a, sim_b), rsa_rho(sim_a, sim_c), rsa_rho(sim_b, sim_c)
    den = ((1 - r_ac ** 2) * (1 - r_bc ** 2)) ** 0.5
    return float("nan") if den <= 1e-12 else (r_ab - r_ac * r_bc) / den


@dataclass(frozen=True)
class RSAResult:
    """Spearman rho of two models' off-diagonal cosine similarities, with interval and p."""

    rho: float
    ci_low: float
    ci_high: float
    p_value: float
    n_emotions: int
    n_pairs: int
    emotions: list[str]
    confidence: float
    n_boot: int
    n_perm: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rsa(sim_a: Float[torch.Tensor, "emotion emotion"],
        sim_b: Float[torch.Tensor, "emotion_b emotion_b"], emotions: Sequence[str], *,
        n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
        confidence: float = 0.95) -> RSAResult:
    """RSA between two similarity matrices over the same ``emotions`` (same order)."""
    from transformer_lens.utilities.statistics import derive_generator

    n = len(emotions)
    if sim_a.shape != (n, n) or sim_b.shape != (n, n):
        raise InputError(f"similarity matrices must both be [{n}, {n}] for {n} emotions, got "
                         f"{tuple(sim_a.shape)} and {tuple(sim_b.shape)}")
    if n < MIN_RSA_EMOTIONS:
        raise InputError(f"RSA needs at least {MIN_RSA_EMOTIONS} shared emotions, got {n} "
                         f"({list(emotions)})")
    if n_boot < 1 or n_perm < 1:
        raise InputError(f"n_boot and n_perm must be >= 1, got {n_boot}, {n_perm}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    a, b = sim_a.double(), sim_b.double()
    ua, ub = _upper(a), _upper(b)
    rho = rsa_rho(a, b)

    gen = derive_generator(seed, "emolens-rsa", "boot")
    draws = []
    iu, ju = torch.triu_indices(n, n, offset=1)
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=gen)
        keep = idx[iu] != idx[ju]  # a pair of an emotion with its own copy is no pair
        if int(keep.sum()) < 3:
            continue
        xa = a[idx[iu[keep]], idx[ju[keep]]]
        xb = b[idx[iu[keep]], idx[ju[keep]]]
        r = _pearson_last(_rank_rows(xa), _rank_rows(xb))
        if torch.isfinite(r):
            draws.append(float(r))
    alpha = (1.0 - confidence) / 2
    if draws:
        t = torch.tensor(draws, dtype=torch.float64)
        lo, hi = float(torch.quantile(t, alpha)), float(torch.quantile(t, 1 - alpha))
    else:
        lo = hi = float("nan")

    pgen = derive_generator(seed, "emolens-rsa", "perm")
    perms = torch.argsort(torch.rand(n_perm, n, generator=pgen, dtype=torch.float64), dim=-1)
    rb = _rank_rows(ub)
    null_a = torch.stack([_upper(a[p][:, p]) for p in perms])  # [n_perm, pairs]
    null = _pearson_last(_rank_rows(null_a), rb.expand_as(null_a))
    hits = float((null.abs() >= abs(rho) - 1e-12).sum())
    p = (hits + 1.0) / (n_perm + 1.0)
    return RSAResult(rho=rho, ci_low=lo, ci_high=hi, p_value=p, n_emotions=n,
                     n_pairs=int(ua.numel()), emotions=list(emotions),
                     confidence=float(confidence), n_boot=int(n_boot), n_perm=int(n_perm),
                     seed=int(seed))


def registry_rsa(reg_a: Any, reg_b: Any, *, layer_a: int | None = None,
                 layer_b: int | None = None, **kwargs: Any) -> RSAResult:
    """RSA between two registries at their default layers (or the given ones), over the
    emotions both have (in ``reg_a``'s order)."""
    shared = [e for e in reg_a.emotions if e in set(reg_b.emotions)]
    if len(shared) < MIN_RSA_EMOTIONS:
        raise InputError(f"the registries share {len(shared)} emotions ({shared}); RSA needs "
                         f"at least {MIN_RSA_EMOTIONS}")
    ia = [reg_a.emotions.index(e) for e in shared]
    ib = [reg_b.emotions.index(e) for e in shared]
    ma = reg_a.matrix(layer_a)[ia]
    mb = reg_b.matrix(layer_b)[ib]
    return rsa(cosine_matrix(ma), cosine_matrix(mb), shared, **kwargs)
