from __future__ import annotations

import numpy as np
import pytest

from medsign_forensics.dicom.pixels import normalise_report, pixel_sha256, quantize, report_sha256
from medsign_forensics.errors import InputError


def test_digest_depends_on_values_and_shape_not_on_storage_width() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert pixel_sha256(image) == pixel_sha256(image.astype(np.uint16))
    assert pixel_sha256(image) == pixel_sha256(np.asfortranarray(image))
    assert pixel_sha256(image) != pixel_sha256(image.reshape(4, 3))
    changed = image.copy()
    changed[1, 1] += 1
    assert pixel_sha256(image) != pixel_sha256(changed)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 3), np.uint8), np.zeros((4, 4), np.float32),
                                 np.full((2, 2), -1, np.int16), np.zeros((0, 3), np.uint8)])
def test_digest_refuses_what_it_cannot_define(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        pixel_sha256(bad)


def test_report_digest_ignores_line_endings_and_outer_whitespace() -> None:
    assert report_sha256("Heart normal.\r\nLungs clear.  \n") == report_sha256("Heart normal.\nLungs clear.")
    assert report_sha256("Heart normal.") != report_sha256("Heart enlarged.")
    assert normalise_report("  a\r\nb\r ") == "a\nb"


def test_quantize_maps_unit_range_to_full_scale() -> None:
    image = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    assert quantize(image, 8).tolist() == [[0, 128, 255, 255]]
    assert quantize(image, 16).dtype == np.uint16 and quantize(image, 16)[0, 2] == 65535
    with pytest.raises(InputError):
        quantize(image, 12)
