"""emolens.stats on synthetic data: planted effects are found, absent ones are not."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emolens import stats
from emolens.stats import StatsError


def _rng(seed):
    return np.random.default_rng(seed)


def test_mean_estimate_finds_planted_effect():
    x = _rng(0).normal(0.6, 1.0, size=60)
    est = stats.mean_estimate(x, seed=1)
    assert est.excludes(0.0) and est.low > 0
    assert est.p_value < 0.01
    assert est.low < x.mean() < est.high
    assert est.n == 60
    assert "CI" in str(est) and est.to_dict()["value"] == pytest.approx(x.mean())


def test_mean_estimate_null_is_calibrated():
    ps, covered = [], 0
    for seed in range(40):
        x = _rng(100 + seed).normal(0.0, 1.0, size=30)
        est = stats.mean_estimate(x, seed=seed, n_resamples=800, n_permutations=800)
        ps.append(est.p_value)
        covered += not est.excludes(0.0)
    ps = np.array(ps)
    assert covered >= 34                       # nominal 95%: 38/40 expected
    assert (ps < 0.05).mean() <= 0.15          # roughly uniform p-values
    assert 0.3 < np.median(ps) < 0.75


def test_seeded_and_deterministic():
    x = _rng(3).normal(size=25)
    assert stats.bootstrap_ci(x, seed=5) == stats.bootstrap_ci(x, seed=5)
    assert stats.sign_flip_pvalue(x, seed=5) == stats.sign_flip_pvalue(x, seed=5)


def test_paired_difference_and_sign_flip():
    rng = _rng(1)
    base = rng.normal(size=40)
    treated = base + 0.3 + rng.normal(scale=0.3, size=40)
    est = stats.paired_difference(treated, base)
    assert est.low > 0 and est.p_value < 0.001
    same = stats.paired_difference(base, base)
    assert same.value == 0 and same.p_value == 1.0
    # exact enumeration for small n: all-positive differences of 6 items -> p = 2/64
    assert stats.sign_flip_pvalue([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)


def test_two_group_label_permutation():
    rng = _rng(2)
    a, b = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 35)
    est = stats.two_group_difference(a, b)
    assert est.low > 0 and est.p_value < 0.01
    assert stats.permutation_pvalue(a, b) < 0.01
    null_ps = [stats.permutation_pvalue(_rng(s).normal(size=20), _rng(s + 500).normal(size=20),
                                        n_permutations=500, seed=s) for s in range(30)]
    assert np.mean(np.array(null_ps) < 0.05) <= 0.2
    # one sample (paired differences): exact sign-flip enumeration, written out independently
    d = np.array([0.5, -0.2, 1.3, 0.9, -0.4, 1.1, 0.7])
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(d))).reshape(len(d), -1).T
    null = np.abs((signs * d).mean(1))
    expect = float((null >= abs(d.mean()) - 1e-12).mean())
    assert stats.permutation_pvalue(d) == pytest.approx(expect)
    assert stats.permutation_pvalue(d + 1.0, d, paired=True) == pytest.approx(1 / 2 ** 6)


def test_pearson_and_spearman():
    rng = _rng(4)
    x = rng.normal(size=50)
    y = 0.6 * x + 0.8 * rng.normal(size=50)
    r = stats.pearson(x, y)
    assert r.value == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
    assert r.low > 0.2 and r.p_value < 0.001
    s = stats.spearman(x, np.exp(y))   # monotone transform: Spearman unchanged
    assert s.value == pytest.approx(stats.spearman(x, y).value, abs=1e-9)
    covered = 0
    for seed in range(25):
        est = stats.pearson(_rng(seed).normal(size=30), _rng(seed + 99).normal(size=30),
                            seed=seed, n_resamples=500, n_permutations=500)
        covered += not est.excludes(0.0)
    assert covered >= 21
    const = stats.pearson([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(const.value) and "constant" in const.null


def test_spearman_ties():
    s = stats.spearman([1, 2, 2, 3, 4], [1, 2, 2, 3, 4])
    assert s.value == pytest.approx(1.0)


def test_soft_elo_recovers_planted_ratings_and_position_bias():
    true = torch.tensor([-300.0, -100.0, 0.0, 150.0, 250.0])
    bias = 80.0
    first, second = zip(*[(i, j) for i in range(5) for j in range(5) if i != j])
    first, second = torch.tensor(first), torch.tensor(second)
    p = torch.sigmoid((true[first] - true[second] + bias) / stats.ELO_SCALE)
    fit = stats.soft_elo(5, first, second, p, l2=0.0)
    assert torch.allclose(fit.elo, true - true.mean(), atol=0.5)
    assert fit.position_bias == pytest.approx(bias, abs=0.5)
    assert torch.allclose(fit.predict(first, second), p.float(), atol=1e-3)
    anchored = stats.soft_elo(5, first, second, p, l2=0.0, anchor=[0, 1])
    assert anchored.elo[:2].mean().abs() < 1e-3


def test_soft_elo_without_preferences_is_flat():
    first, second = zip(*[(i, j) for i in range(4) for j in range(4) if i != j])
    fit = stats.soft_elo(4, first, second, [0.5] * len(first))
    assert fit.elo.abs().max() < 1e-3


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_bad_input_is_named(bad):
    with pytest.raises(StatsError):
        stats.mean_estimate(bad)


def test_bad_options():
    with pytest.raises(StatsError, match="alternative"):
        stats.sign_flip_pvalue([1.0, 2.0], alternative="bigger")
    with pytest.raises(StatsError, match="equal lengths"):
        stats.soft_elo(3, [0, 1], [1], [0.5, 0.5])
    with pytest.raises(StatsError, match="itself"):
        stats.soft_elo(3, [0], [0], [0.5])
    with pytest.raises(StatsError, match="at least 3"):
        stats.pearson([1.0, 2.0], [2.0, 1.0])


def test_binomial_pvalue_exact_values():
    from emolens.stats import StatsError, binomial_pvalue

    # sign test, 2 of 8: P(X <= 2) + P(X >= 6) = 2 * (1 + 8 + 28) / 256
    assert binomial_pvalue(2, 8) == pytest.approx(74 / 256)
    assert binomial_pvalue(4, 8) == pytest.approx(1.0)
    # one-sided at chance 1/4: P(X >= 3 | n=3) = 1/64
    assert binomial_pvalue(3, 3, 0.25, alternative="greater") == pytest.approx(1 / 64)
    assert binomial_pvalue(0, 3, 0.25, alternative="less") == pytest.approx(27 / 64)
    with pytest.raises(StatsError, match="k=5, n=3"):
        binomial_pvalue(5, 3)
    with pytest.raises(StatsError, match="alternative"):
        binomial_pvalue(1, 3, alternative="more")
