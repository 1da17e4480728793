"""The fair-coin checks of benchmarks/extractor_eval.py, against values computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark_helpers import load_benchmark


@pytest.fixture(scope="module")
def script():
    return load_benchmark("extractor_eval")


def test_fair_coin_pass_probability_matches_the_normal_tail(script):
    # One coin, n = 100: sigma of the mean is 0.05, so +/- 0.05 is +/- 1 sigma: erf(1 / sqrt 2) = 0.6827.
    assert script.fair_coin_pass_probability(100, 1) == pytest.approx(math.erf(1 / math.sqrt(2)), abs=1e-9)
    # k independent coins: the single-coin probability to the k-th power.
    single = script.fair_coin_pass_probability(1000, 1)
    assert script.fair_coin_pass_probability(1000, 48) == pytest.approx(single**48, rel=1e-12)
    # The +/- 0.05 bound is informative at n = 1,000 and hopeless at n = 243 for 48 bits.
    assert script.fair_coin_pass_probability(1000, 48) > 0.9
    assert script.fair_coin_pass_probability(243, 48) < 0.01


def test_bit_mean_test_accepts_balanced_bits_and_rejects_a_biased_bit(script):
    n, k = 400, 48
    balanced = np.zeros((n, k), dtype=np.uint8)
    balanced[: n // 2] = 1  # every bit's mean is exactly 0.5: z^2 = 0, p = 1
    assert script.bit_mean_test(balanced) == pytest.approx(1.0)
    biased = balanced.copy()
    biased[:, 0] = (np.arange(n) < 0.6 * n).astype(np.uint8)  # one bit at 0.6: z = 4, z^2 = 16 vs chi2(48)
    assert 0.9 < script.bit_mean_test(biased) < 1.0  # one mildly biased bit among 48 is not significant
    biased[:, :10] = (np.arange(n) < 0.6 * n).astype(np.uint8)[:, None]  # ten such bits: z^2 = 160
    assert script.bit_mean_test(biased) < 1e-6
