from __future__ import annotations

import numpy as np
import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.localization.metrics import iou, peak_distance, pointing_game


def _mask() -> np.ndarray:
    mask = np.zeros((10, 16), dtype=bool)
    mask[2:6, 3:9] = True
    return mask


def test_pointing_game_hit_and_miss():
    a_map = np.zeros((10, 16), dtype=np.float32)
    a_map[4, 5] = 1.0
    assert pointing_game(a_map, _mask())
    a_map[8, 14] = 2.0
    assert not pointing_game(a_map, _mask())


def test_pointing_game_ties_need_a_majority_and_flat_maps_miss():
    a_map = np.zeros((10, 16), dtype=np.float32)
    a_map[4, 5] = a_map[3, 4] = a_map[9, 15] = 1.0
    assert pointing_game(a_map, _mask())
    a_map[9, 14] = 1.0
    assert not pointing_game(a_map, _mask())
    assert not pointing_game(np.full((10, 16), 0.5), _mask())


def test_peak_distance_is_zero_inside_and_measures_a_miss():
    a_map = np.zeros((10, 16), dtype=np.float32)
    a_map[4, 5] = 1.0
    assert peak_distance(a_map, _mask()) == 0.0
    a_map[4, 13] = 2.0  # five columns right of the mask's last column (8)
    assert peak_distance(a_map, _mask()) == pytest.approx(5.0)
    a_map[9, 8] = 2.0  # a tie, four rows below the mask: the median of the two peaks' distances
    assert peak_distance(a_map, _mask()) == pytest.approx((5.0 + 4.0) / 2)
    assert np.isnan(peak_distance(np.full((10, 16), 0.5), _mask()))


def test_iou_of_the_thresholded_region():
    a_map = np.zeros((10, 16), dtype=np.float32)
    a_map[2:6, 3:6] = 0.7  # half of the mask (12 of 24 pixels)
    a_map[0, 0:4] = 0.6  # 4 pixels outside
    assert iou(a_map, _mask()) == pytest.approx(12 / 28)
    assert iou(a_map, _mask(), threshold=0.65) == pytest.approx(12 / 24)
    assert iou(_mask().astype(np.float32), _mask()) == 1.0


def test_metrics_reject_empty_masks_and_shape_mismatch():
    with pytest.raises(InputError, match="empty"):
        pointing_game(np.ones((4, 4)), np.zeros((4, 4), dtype=bool))
    with pytest.raises(InputError, match="same shape"):
        iou(np.ones((4, 5)), np.ones((5, 4), dtype=bool))
