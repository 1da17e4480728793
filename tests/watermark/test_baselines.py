import numpy as np
import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.watermark.baselines import DwtDctBaseline, RivaGanBaseline, get_baseline


def test_dwtdct_greyscale_round_trip(chest):
    baseline = get_baseline("dwtdct")
    key = np.random.default_rng(1).integers(0, 2, 48, dtype=np.uint8)
    marked = baseline.embed(chest, key)
    assert marked.shape == chest.shape and marked.dtype == np.float32
    assert 0 < np.abs(marked - chest).mean() < 0.02  # invisible-ish, but there
    # Measured 0.85-0.90 on these images: bits whose blocks clip at black or white are lost.
    assert (baseline.extract(marked) == key).mean() >= 0.8
    stored = (np.rint(marked * 255) / 255).astype(np.float32)  # as an 8-bit greyscale PNG
    assert (baseline.extract(stored) == key).mean() >= 0.8


def test_dwtdct_any_length(chest):
    baseline = DwtDctBaseline(bits=64)
    key = np.random.default_rng(2).integers(0, 2, 64, dtype=np.uint8)
    assert (baseline.extract(baseline.embed(chest, key)) == key).mean() >= 0.75  # fewer blocks per bit


def test_rivagan_colour_round_trip_and_greyscale_interface(chest):
    baseline = RivaGanBaseline()
    key = np.random.default_rng(3).integers(0, 2, 32, dtype=np.uint8)
    bgr = baseline.embed_rgb(chest, key)
    assert bgr.shape == (256, 256, 3)
    assert (baseline.extract_rgb(bgr) == key).mean() >= 0.9
    marked = baseline.embed(chest, key)
    assert marked.shape == chest.shape and baseline.extract(marked).shape == (32,)


def test_baseline_input_checks(chest):
    with pytest.raises(InputError, match="256x256"):
        get_baseline("dwtdct").embed(chest[:100, :100], np.zeros(48, np.uint8))
    with pytest.raises(InputError, match="48-bit"):
        get_baseline("dwtdct").embed(chest, np.zeros(40, np.uint8))
    with pytest.raises(InputError, match="unknown baseline"):
        get_baseline("trustmark")
