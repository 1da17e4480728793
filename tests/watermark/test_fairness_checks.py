"""The fair-coin checks every p-value rests on (watermark/fairness.py), against values computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.watermark.fairness import (
    binned_chisquare,
    bit_fairness,
    bit_mean_chi2,
    fair_coin_pass_probability,
)


def test_fair_coin_pass_probability_matches_the_normal_tail():
    # One coin, n = 100: sigma of the mean is 0.05, so +/- 0.05 is +/- 1 sigma: erf(1 / sqrt 2) = 0.6827.
    assert fair_coin_pass_probability(100, 1) == pytest.approx(math.erf(1 / math.sqrt(2)), abs=1e-9)
    # k independent coins: the single-coin probability to the k-th power.
    single = fair_coin_pass_probability(1000, 1)
    assert fair_coin_pass_probability(1000, 48) == pytest.approx(single**48, rel=1e-12)
    # The +/- 0.05 bound is informative at n = 1,000 and hopeless at n = 243 for 48 bits.
    assert fair_coin_pass_probability(1000, 48) > 0.9
    assert fair_coin_pass_probability(243, 48) < 0.01


def test_bit_mean_test_accepts_balanced_bits_and_rejects_a_biased_bit():
    n, k = 400, 48
    balanced = np.zeros((n, k), dtype=np.uint8)
    balanced[: n // 2] = 1  # every bit's mean is exactly 0.5: z^2 = 0, p = 1
    assert bit_mean_chi2(balanced)[1] == pytest.approx(1.0)
    biased = balanced.copy()
    biased[:, 0] = (np.arange(n) < 0.6 * n).astype(np.uint8)  # one bit at 0.6: z = 4, z^2 = 16 vs chi2(48)
    assert 0.9 < bit_mean_chi2(biased)[1] < 1.0  # one mildly biased bit among 48 is not significant
    biased[:, :10] = (np.arange(n) < 0.6 * n).astype(np.uint8)[:, None]  # ten such bits: z^2 = 160
    assert bit_mean_chi2(biased)[1] < 1e-6
    assert bit_mean_chi2(biased)[0] == pytest.approx(160.0)


def test_binned_chisquare_pools_the_tails_and_accepts_binomial_counts():
    rng = np.random.default_rng(0)
    counts = rng.binomial(48, 0.5, size=5000)
    stat, p, bins = binned_chisquare(counts, 48)
    assert 5 < bins < 49 and p > 1e-3
    assert binned_chisquare(counts + 4, 48)[1] < 1e-12  # every image agreeing 4 bits more: not fair coins


def test_bit_fairness_tells_fair_bits_from_bits_that_follow_a_bias():
    rng = np.random.default_rng(1)
    fair = bit_fairness(rng.integers(0, 2, size=(2000, 48), dtype=np.uint8), n_keys=8, seed=3)
    assert fair["images"] == 2000 and fair["bits"] == 48
    assert fair["bit_mean_p"] > 1e-3 and fair["chi2_p"] > 1e-3
    assert 23 < fair["count_mean"] < 25 and fair["count_var"] == pytest.approx(12, rel=0.15)  # Binomial(48, 1/2)
    biased = (rng.random((2000, 48)) < 0.7).astype(np.uint8)
    report = bit_fairness(biased, n_keys=8, seed=3)
    assert report["bit_mean_p"] < 1e-12 and report["bit_mean_min"] > 0.6
    assert report["chi2_p"] < 1e-12 and report["keys_p_below_0.05"] > 0.5
    with pytest.raises(InputError):
        bit_fairness(np.zeros(48, dtype=np.uint8), n_keys=8, seed=3)
