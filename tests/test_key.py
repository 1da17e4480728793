import math

import numpy as np
import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.key import (
    Correction,
    bits_to_hex,
    family_p_value,
    hex_matrix,
    hex_to_bits,
    identification_threshold,
    identify,
    match_counts,
    p_value,
    per_key_fpr,
    random_key,
    threshold,
)


def exact_tail(m: int, k: int) -> float:
    return sum(math.comb(k, j) for j in range(m, k + 1)) / 2**k


@pytest.mark.parametrize("m", [0, 1, 24, 36, 41, 44, 48])
def test_p_value_is_the_exact_binomial_tail(m):
    assert p_value(m, 48) == pytest.approx(exact_tail(m, 48), rel=1e-12)


@pytest.mark.parametrize(("fpr", "expected"), [(1e-3, 36), (1e-6, 41), (1e-9, 44)])
def test_thresholds_for_48_bits(fpr, expected):
    m = threshold(48, fpr)
    assert m == expected
    assert exact_tail(m, 48) <= fpr < exact_tail(m - 1, 48)


@pytest.mark.parametrize(("n_keys", "expected"), [(1_000, 44), (100_000, 46)])
def test_identification_thresholds_at_global_1e_6(n_keys, expected):
    assert identification_threshold(48, n_keys, 1e-6) == expected
    assert identification_threshold(48, n_keys, 1e-6, Correction.SIDAK) == expected


def test_sidak_is_slightly_less_conservative_than_bonferroni():
    bonferroni = per_key_fpr(0.05, 10)
    sidak = per_key_fpr(0.05, 10, Correction.SIDAK)
    assert bonferroni == pytest.approx(0.005)
    assert sidak == pytest.approx(1 - 0.95 ** (1 / 10))
    assert sidak > bonferroni
    assert family_p_value(1e-3, 1000, Correction.SIDAK) == pytest.approx(1 - (1 - 1e-3) ** 1000)
    assert family_p_value(1e-3, 10_000) == 1.0


def test_threshold_beyond_reach_is_k_plus_one():
    assert threshold(8, 1e-9) == 9


def test_identify_finds_the_key_and_applies_the_correction():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2, size=(1000, 48), dtype=np.uint8)
    extracted = keys[123].copy()
    extracted[:3] ^= 1  # 45 of 48 bits right
    result = identify(extracted, keys, global_fpr=1e-6)
    assert result.index == 123 and result.matches == 45 and result.threshold == 44 and result.detected
    assert result.family_p_value == pytest.approx(min(1.0, 1000 * exact_tail(45, 48)))
    noise = identify(rng.integers(0, 2, 48), keys, global_fpr=1e-6)
    assert not noise.detected


def test_bad_arguments():
    with pytest.raises(InputError):
        p_value(49, 48)
    with pytest.raises(InputError):
        threshold(48, 0.0)
    with pytest.raises(InputError):
        per_key_fpr(1e-6, 0)
    with pytest.raises(InputError):
        identify(np.zeros(48), np.zeros((3, 32)), 1e-6)


def test_hex_round_trip_msb_first():
    key = np.array([1, 0, 0, 0] + [0, 0, 0, 1] + [1] * 40, dtype=np.uint8)
    text = bits_to_hex(key)
    assert text.startswith("81") and len(text) == 12
    assert np.array_equal(hex_to_bits(text), key)


def test_random_key_and_matches():
    rng = np.random.default_rng(0)
    key = random_key(48, rng)
    assert key.shape == (48,) and set(np.unique(key)) <= {0, 1}
    assert match_counts(key, key) == 48
    assert match_counts(1 - key, key) == 0


@pytest.mark.parametrize("bad", ["", "xyz", "0g"])
def test_bad_hex(bad):
    with pytest.raises(InputError):
        hex_to_bits(bad)


def test_unsupported_length():
    with pytest.raises(InputError):
        random_key(40, np.random.default_rng(0))


def test_hex_matrix_reads_many_keys_at_once_and_refuses_damage():
    rng = np.random.default_rng(1)
    keys = np.stack([random_key(32, rng) for _ in range(5)])
    hexes = [bits_to_hex(k) for k in keys]
    assert np.array_equal(hex_matrix(hexes, 32), keys)
    assert np.array_equal(hex_matrix([h.upper() for h in hexes], 32), keys)
    assert hex_matrix([], 48).shape == (0, 48)
    for damaged in (hexes[:4] + [hexes[4][:-1]], hexes[:4] + ["z" + hexes[4][1:]], hexes[:4] + ["é" * 8]):
        with pytest.raises(InputError):
            hex_matrix(damaged, 32)


def test_match_counts_broadcasts_one_message_against_many_keys_and_back():
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 2, size=(4, 48), dtype=np.uint8)
    message = keys[2].copy()
    message[:5] ^= 1
    counts = match_counts(message, keys)
    assert counts.shape == (4,) and counts[2] == 43
    assert counts.tolist() == [int(np.sum(message == k)) for k in keys]
    assert match_counts(keys, keys[0]).tolist() == [int(np.sum(k == keys[0])) for k in keys]
    with pytest.raises(InputError):
        match_counts(message[:32], keys)
    with pytest.raises(InputError):
        match_counts(keys[:3], keys)
