"""Preparing suspect images for inversion: size, geometry and levels."""

from __future__ import annotations

import numpy as np

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.watermark.latent_reader import REFERENCE_LEVELS, latent_mask, prepare


def _image(size: int = 256) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return (0.2 + 0.5 * np.sin(3 * x) ** 2 * np.cos(2 * y) ** 2 + 0.05 * x).astype(np.float32)


def test_a_centre_crop_goes_back_where_it_was():
    image = _image()
    crop = get_attack("crop_center_area0.5").exact(image)
    prepared = prepare(crop, native=256)
    top = (256 - crop.shape[0]) // 2
    inside = prepared.valid[top:top + crop.shape[0], top:top + crop.shape[1]]
    assert prepared.pixels.shape == (256, 256) and inside.all()
    assert prepared.valid.sum() == inside.sum()  # nothing outside the crop counts
    assert any("centre" in note for note in prepared.notes)
    mask = latent_mask(prepared.valid, 8)
    assert mask.shape == (32, 32) and 0.3 < mask.mean() < 0.5


def test_brightness_is_undone_and_clipped_pixels_do_not_count():
    image = _image()
    bright = get_attack("brightness_x2").exact(image)
    prepared, reference = prepare(bright, native=256), prepare(image, native=256)
    clipped = bright >= 1 - 0.5 / 255
    assert clipped.any() and not prepared.valid[clipped].any()
    keep = prepared.valid & reference.valid
    assert np.abs(prepared.pixels[keep] - reference.pixels[keep]).mean() < 0.02
    low, mid = np.percentile(reference.pixels[reference.valid], (1, 50))
    assert abs(low - REFERENCE_LEVELS[0]) < 0.01 and abs(mid - REFERENCE_LEVELS[1]) < 0.01


def test_a_rotation_found_by_the_pilots_is_undone():
    image = _image()
    rotated = get_attack("rotate_25").exact(image)
    prepared = prepare(rotated, native=256, geometry=(-25.0, 1.0))
    reference = prepare(image, native=256)
    centre = slice(96, 160)
    a, b = prepared.pixels[centre, centre].ravel(), reference.pixels[centre, centre].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.98
    assert not prepared.valid[0, 0] and prepared.valid[128, 128]


def test_larger_images_are_resized_to_the_native_size():
    prepared = prepare(np.kron(_image(), np.ones((2, 2), dtype=np.float32)), native=256)
    assert prepared.pixels.shape == (256, 256) and any("resized" in note for note in prepared.notes)
