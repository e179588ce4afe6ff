"""Paired statistics of experiments/stats.py against known values (scipy 1.17.1 numbers,
hard-coded: scipy is not a dependency of the project)."""

import itertools

import numpy as np
import pytest

from experiments.stats import (
    bootstrap_mean_ci,
    contrast,
    markdown_contrasts,
    pair_by_seed,
    scores_by_seed,
    student_t_cdf,
    tost_paired,
    wilcoxon_signed_rank,
)

# Darwin's Zea mays data (Fisher 1935), scipy.stats.wilcoxon's documented example
ZEA = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def test_wilcoxon_exact_matches_the_classic_example():
    w_plus, p = wilcoxon_signed_rank(ZEA)
    assert w_plus == 96.0  # scipy reports min(W+, W-) = 24 = 120 - 96
    assert p == pytest.approx(0.041259765625, abs=1e-12)  # scipy method="exact"


def test_wilcoxon_small_samples_and_zeros():
    assert wilcoxon_signed_rank([1.0, 2.0, 3.0])[1] == pytest.approx(0.25)  # 2 * 1/8
    assert wilcoxon_signed_rank([0.4, -0.1, 0.7, 1.2, 0.9])[1] == pytest.approx(0.125)
    assert wilcoxon_signed_rank([0.0, 0.0]) == (0.0, 1.0)
    # zeros are dropped (Wilcoxon's rule): the same p as without them
    assert wilcoxon_signed_rank([0.0, 1.0, 2.0, 3.0])[1] == pytest.approx(0.25)


def test_wilcoxon_with_ties_is_the_exact_sign_flip_distribution():
    d = np.array([1, -1, 2, 2, -3, 3, 4, 0.0, 1.5, 1.5])
    w_plus, p = wilcoxon_signed_rank(d)
    nz = d[d != 0]
    ranks = np.argsort(np.argsort(np.abs(nz))) + 1.0  # then tie-averaged by hand below
    for value in np.unique(np.abs(nz)):
        ranks[np.abs(nz) == value] = ranks[np.abs(nz) == value].mean()
    sums = np.array([ranks[np.array(s, bool)].sum()
                     for s in itertools.product([0, 1], repeat=nz.size)])
    brute = 2 * min((sums <= w_plus).mean(), (sums >= w_plus).mean())
    assert w_plus == 36.0 and p == pytest.approx(brute) and p == pytest.approx(0.1328125)


def test_wilcoxon_normal_approximation_above_the_exact_limit():
    d = np.round(np.random.default_rng(0).normal(0.3, 1, 80), 1)  # 80 pairs, many ties
    w_plus, p = wilcoxon_signed_rank(d)
    assert w_plus == 2194.0
    assert p == pytest.approx(0.00043311323798168346, rel=1e-9)  # scipy method="approx"


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29])
def test_student_t_cdf(df):
    known = {1: 0.8040867239846963, 2: 0.8535533905932737, 3: 0.8738922518222476,
             4: 0.8849001794597505, 9: 0.9045264414151379, 29: 0.916026943795865}
    assert student_t_cdf(2.0 / np.sqrt(2), df) == pytest.approx(known[df], abs=1e-12)
    assert student_t_cdf(-1.3, df) + student_t_cdf(1.3, df) == pytest.approx(1.0)
    assert student_t_cdf(0.0, df) == 0.5


def test_tost_matches_two_one_sided_t_tests():
    # scipy: max(ttest_1samp(d, -1, 'greater'), ttest_1samp(d, 1, 'less')).pvalue
    assert tost_paired([0.3, -0.2, 0.5, 0.1, 0.4, -0.1], 1.0) == pytest.approx(
        0.00038300919124643727, rel=1e-9)
    assert tost_paired([1.2, 0.4, 2.0, -0.3, 0.9], 1.0) == pytest.approx(
        0.34969739808441985, rel=1e-9)
    assert tost_paired([0.5, 0.5, 0.5], 1.0) == 0.0 and tost_paired([2.0, 2.0], 1.0) == 1.0


def test_bootstrap_ci_contains_the_mean_is_seeded_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 2.0, 5), rng.normal(1.0, 2.0, 80)
    lo, hi = bootstrap_mean_ci(small)
    assert lo < small.mean() < hi
    assert bootstrap_mean_ci(small) == (lo, hi)  # seeded: the same table twice
    assert bootstrap_mean_ci(small, seed=1) != (lo, hi)
    lo_l, hi_l = bootstrap_mean_ci(large)
    assert lo_l < large.mean() < hi_l and hi_l - lo_l < (hi - lo) / 2
    assert bootstrap_mean_ci([1.2, 0.4, 2.0, -0.3, 0.9]) == pytest.approx((0.18, 1.52))


def test_pairing_by_seed_refuses_unpaired_runs():
    seeds, a, b = pair_by_seed({2: 1.0, 0: 3.0}, {0: 4.0, 2: 0.5})
    assert pair_by_seed({10: 0.0, 9: 0.0}, {9: 0.0, 10: 0.0})[0] == [9, 10]  # not as text
    assert seeds == [0, 2] and a.tolist() == [3.0, 1.0] and b.tolist() == [4.0, 0.5]
    with pytest.raises(ValueError, match=r"seeds \[1\]"):
        pair_by_seed({0: 1.0, 1: 2.0}, {0: 1.0})


def test_contrast_and_markdown_table():
    light = {0: 60.0, 1: 61.0, 2: 59.5, 3: 62.0, 4: 60.5}
    hrf = {0: 61.2, 1: 61.4, 2: 61.5, 3: 61.7, 4: 61.4}
    c = contrast("hrf4 - light", light, hrf)
    assert c.diffs == pytest.approx((1.2, 0.4, 2.0, -0.3, 0.9)) and c.mean == pytest.approx(0.84)
    assert c.ci == pytest.approx((0.18, 1.52))
    assert c.p_wilcoxon == pytest.approx(0.125) and c.p_tost == pytest.approx(0.34969739808, 1e-9)
    table = markdown_contrasts([c])
    assert "| hrf4 - light | 5 | +0.84 | [+0.18, +1.52] | 0.125 | 0.35 |" in table
    assert "TOST p (±1)" in table and "3: -0.30" in table


def test_scores_by_seed_average_folds_in_points():
    cells = [{"backbone": "conformer", "variant": "light", "seed": s, "fold": f,
              "test": {"ua": 0.5 + 0.01 * s + 0.001 * f}} for s in (0, 1) for f in (0, 1)]
    assert scores_by_seed({"cells": cells}, "conformer", "light") == pytest.approx(
        {0: 50.05, 1: 51.05})
