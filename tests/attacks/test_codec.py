import subprocess
import sys

import numpy as np
import pytest

from medsign_forensics.attacks.codec import jpeg_round_trip, levels, quantise, to_uint8
from medsign_forensics.attacks.library import get_attack
from medsign_forensics.errors import InputError


def test_rounds_half_to_even_and_clips():
    image = np.array([[-0.2, 0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255, 1.3]])
    assert to_uint8(image).tolist() == [[0, 0, 2, 2, 254, 255]]
    assert quantise(image).dtype == np.float32
    assert np.array_equal(quantise(image), to_uint8(image).astype(np.float32) / 255)


def test_rounding_is_done_in_float64_not_in_the_images_precision():
    x = np.array([1058806812], dtype=np.uint32).view(np.float32)  # x * 255 = 155.4999983 exactly
    assert float(x[0] * np.float32(255)) == 155.5  # float32 arithmetic would round it up to 156
    assert to_uint8(x).tolist() == [155]


def test_uint8_passes_through_and_depths_are_checked():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert to_uint8(pixels) is pixels
    assert levels(np.array([1.0]), 12).tolist() == [4095.0]
    with pytest.raises(InputError):
        levels(np.array([0.5]), 0)


def test_the_requantisation_and_jpeg_attacks_are_the_codec():
    rng = np.random.default_rng(0)
    image = rng.random((40, 48)).astype(np.float32)
    assert np.array_equal(get_attack("requant_8bit").exact(image), quantise(image))
    assert np.array_equal(get_attack("requant_12bit").exact(image), quantise(image, 12))
    coded = jpeg_round_trip(image, 50)
    assert coded.dtype == np.uint8 and coded.shape == image.shape
    assert np.array_equal(get_attack("jpeg_q50").exact(image), coded.astype(np.float32) / 255)
    assert not np.array_equal(coded, to_uint8(image))  # JPEG 50 is lossy on noise
    rgb = to_uint8(rng.random((32, 32, 3)))
    assert jpeg_round_trip(rgb, 90).shape == (32, 32, 3)


def test_the_codec_and_the_file_writer_load_without_torch():
    code = ("import sys, medsign_forensics.attacks.codec, medsign_forensics.fileio; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
