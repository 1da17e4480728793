import itertools
import json

import numpy as np
import pytest
from scipy.stats import binom

from medsign_forensics.errors import InputError
from medsign_forensics.key import p_value
from medsign_forensics.watermark.calibration import NullCalibration, fit_null
from medsign_forensics.watermark.stats import match_probabilities, poisson_binomial_sf

K = 48


def biased_rates(rng: np.random.Generator) -> np.ndarray:
    """Per-bit chance of reading a 1 on a biased family, spanning the measured 0.35-0.67."""
    rates = rng.uniform(0.35, 0.67, K)
    rates[0] = 0.7
    return rates


def sample(rates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.random((n, rates.size)) < rates).astype(np.uint8)


@pytest.fixture(scope="module")
def calibration() -> NullCalibration:
    rng = np.random.default_rng(0)
    return fit_null(
        {
            "real": sample(np.full(K, 0.5), 2000, rng),
            "phantoms": sample(biased_rates(np.random.default_rng(1)), 2000, rng),
        }
    )


@pytest.mark.parametrize("m", [0, 1, 24, 36, 41, 44, 48, 49])
def test_poisson_binomial_is_the_binomial_at_fair_coins(m):
    expected = binom.sf(m - 1, K, 0.5)
    assert poisson_binomial_sf(m, np.full(K, 0.5)) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_poisson_binomial_vectorises_over_keys():
    m = np.array([0, 24, 36, 44, 48])
    got = poisson_binomial_sf(m, np.full((m.size, K), 0.5))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, binom.sf(m - 1, K, 0.5), rtol=1e-12)


def test_poisson_binomial_matches_brute_force_enumeration():
    rng = np.random.default_rng(2)
    q = rng.uniform(0.05, 0.95, (3, 8))
    for row in q:
        dist = np.zeros(9)
        for outcome in itertools.product((0, 1), repeat=8):
            x = np.array(outcome)
            dist[x.sum()] += np.prod(np.where(x == 1, row, 1 - row))
        expected = [dist[m:].sum() for m in range(10)]
        got = poisson_binomial_sf(np.arange(10), np.tile(row, (10, 1)))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_match_probabilities_take_the_key_friendly_end():
    keys = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8)
    low, high = np.array([0.4, 0.3, 0.5]), np.array([0.6, 0.55, 0.7])
    q = match_probabilities(keys, low, high)
    np.testing.assert_allclose(q, [[0.6, 0.7, 0.7], [0.6, 0.55, 0.5]])


def test_fit_null_covers_the_bias_and_brackets_a_fair_coin(calibration):
    low, high = np.array(calibration.rate_one_low), np.array(calibration.rate_one_high)
    assert calibration.bits == K and high[0] >= 0.7
    assert np.all(low <= 0.5) and np.all(high >= 0.5)
    assert np.all(low >= 0.01) and np.all(high <= 0.99)
    real, phantoms = calibration.sets
    assert real["name"] == "real" and real["n"] == 2000 and real["chi2_p"] > 1e-3
    assert phantoms["chi2_p"] < 1e-10 and phantoms["mean_max"] > 0.65


def test_calibrated_p_value_is_more_conservative_for_a_key_that_follows_the_bias(calibration):
    keys = (biased_rates(np.random.default_rng(1)) > 0.5).astype(np.uint8)[None, :]
    extracted = keys[0].copy()
    extracted[:12] ^= 1  # 36 of 48 agree
    matches, p = calibration.p_values(extracted, keys)
    assert matches.tolist() == [36]
    assert p[0] > p_value(36, K)
    fair_matches, fair_p = NullCalibration.fair(K).p_values(extracted, keys)
    assert fair_matches.tolist() == [36] and fair_p[0] == pytest.approx(p_value(36, K), rel=1e-12)


def test_false_positive_rate_holds_on_biased_unmarked_bits(calibration):
    rng = np.random.default_rng(3)
    rates = biased_rates(np.random.default_rng(1))
    aligned = (rates > 0.5).astype(np.uint8)  # the worst registered key for this family
    keys = np.vstack([aligned, rng.integers(0, 2, (3, K), dtype=np.uint8)])
    images = sample(rates, 1500, rng)
    p = np.array([calibration.p_values(bits, keys)[1] for bits in images])  # 6000 (image, key) pairs
    assert (p <= 0.01).mean() <= 0.016
    binomial = np.array([p_value(int((bits == aligned).sum()), K) for bits in images])
    assert (binomial <= 0.01).mean() > 0.05  # what the calibration protects against


def test_false_positive_rate_holds_at_the_calibrations_own_worst_case(calibration):
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 2, (5, K), dtype=np.uint8)
    q = match_probabilities(keys, np.array(calibration.rate_one_low), np.array(calibration.rate_one_high))
    agree = rng.random((1000, *q.shape)) < q  # each bit agrees exactly as often as the null allows
    p = poisson_binomial_sf(agree.sum(axis=2).ravel(), np.tile(q, (1000, 1)))  # 5000 (image, key) pairs
    assert np.mean(p <= 0.01) <= 0.016
    extracted = np.where(agree[0, 0], keys[0], 1 - keys[0])
    assert calibration.p_values(extracted, keys[:1])[1][0] == pytest.approx(p[0], rel=1e-12)


def test_round_trip_through_json(calibration):
    again = NullCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again == calibration
    assert NullCalibration.from_dict(NullCalibration.fair(8).to_dict()) == NullCalibration.fair(8)


def test_from_dict_is_strict(calibration):
    data = calibration.to_dict()
    with pytest.raises(InputError, match="unknown field"):
        NullCalibration.from_dict({**data, "extra": 1})
    with pytest.raises(InputError, match="missing field"):
        NullCalibration.from_dict({k: v for k, v in data.items() if k != "margin_sd"})
    with pytest.raises(InputError, match="low and high rates"):
        NullCalibration.from_dict({**data, "rate_one_low": data["rate_one_low"][:-1]})
    with pytest.raises(InputError, match="calibration set"):
        NullCalibration.from_dict({**data, "sets": [{"name": "x"}]})
    with pytest.raises(InputError, match="wrong type"):
        NullCalibration.from_dict({**data, "rate_one_high": ["a"] * K})


def test_bad_input_is_refused():
    good = np.zeros((10, K), dtype=np.uint8)
    with pytest.raises(InputError, match="at least one set"):
        fit_null({})
    with pytest.raises(InputError, match="same k"):
        fit_null({"a": good, "b": np.zeros((10, K - 1), dtype=np.uint8)})
    with pytest.raises(InputError, match="same k"):
        fit_null({"a": np.zeros((0, K), dtype=np.uint8)})
    with pytest.raises(InputError, match="only 0 and 1"):
        fit_null({"a": good + 2})
    with pytest.raises(InputError, match="cannot compare"):
        NullCalibration.fair(K).p_values(np.zeros(K - 1), good)
    with pytest.raises(InputError, match="only 0 and 1"):
        NullCalibration.fair(K).p_values(np.full(K, 3), good)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        poisson_binomial_sf(3, np.full(K, 1.5))
    with pytest.raises(InputError, match="rates"):
        match_probabilities(good, np.full(K, 0.6), np.full(K, 0.4))


def test_fair_families_are_pooled_and_only_biased_ones_widen_the_range() -> None:
    rng = np.random.default_rng(11)
    fair_small = rng.integers(0, 2, size=(64, 48), dtype=np.uint8)
    fair_large = rng.integers(0, 2, size=(4000, 48), dtype=np.uint8)
    pooled = fit_null({"small": fair_small, "large": fair_large})
    separate_margin = 2 * np.sqrt(0.25 / 64)
    assert max(pooled.rate_one_high) < 0.5 + separate_margin / 2  # the small family's noise is not taken per bit
    biased = (rng.random((2000, 48)) < np.where(np.arange(48) == 5, 0.7, 0.5)).astype(np.uint8)
    widened = fit_null({"small": fair_small, "large": fair_large, "biased": biased})
    assert widened.rate_one_high[5] >= 0.7 and widened.rate_one_high[5] > pooled.rate_one_high[5]
