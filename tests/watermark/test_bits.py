import numpy as np
import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.watermark.bits import bits_to_hex, hex_to_bits, matches, random_key


def test_hex_round_trip_msb_first():
    key = np.array([1, 0, 0, 0] + [0, 0, 0, 1] + [1] * 40, dtype=np.uint8)
    text = bits_to_hex(key)
    assert text.startswith("81") and len(text) == 12
    assert np.array_equal(hex_to_bits(text), key)


def test_random_key_and_matches():
    rng = np.random.default_rng(0)
    key = random_key(48, rng)
    assert key.shape == (48,) and set(np.unique(key)) <= {0, 1}
    assert matches(key, key) == 48
    assert matches(1 - key, key) == 0


@pytest.mark.parametrize("bad", ["", "xyz", "0g"])
def test_bad_hex(bad):
    with pytest.raises(InputError):
        hex_to_bits(bad)


def test_unsupported_length():
    with pytest.raises(InputError):
        random_key(40, np.random.default_rng(0))
