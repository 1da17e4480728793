"""How well a localization map finds the lesion: the pointing game, how far its peak lands from the lesion, and
the IoU of its salient region.

Each compares a map (H, W) with a non-empty boolean ground-truth lesion mask of the same shape; a finding the
renderer drew no mask for cannot be scored and is an input error, not a silent zero.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from medsign_forensics.errors import InputError


def _check(a_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a_map, mask = np.asarray(a_map, dtype=np.float64), np.asarray(mask, dtype=bool)
    if a_map.shape != mask.shape or a_map.ndim != 2:
        raise InputError(f"the map {a_map.shape} and the mask {mask.shape} must be 2-D arrays of the same shape")
    if not mask.any():
        raise InputError("the ground-truth mask is empty; only localised findings can be scored")
    return a_map, mask


def pointing_game(a_map: np.ndarray, mask: np.ndarray) -> bool:
    """True when the map's maximum falls inside the mask.

    When several pixels share the maximum, the hit needs most of them (more than half) inside the mask; a
    constant map points nowhere and always misses.
    """
    a_map, mask = _check(a_map, mask)
    peak = a_map == a_map.max()
    if peak.all():
        return False
    return bool(np.count_nonzero(peak & mask) * 2 > np.count_nonzero(peak))


def peak_distance(a_map: np.ndarray, mask: np.ndarray) -> float:
    """Pixels from the map's maximum to the nearest mask pixel (0 inside it); NaN for a constant map.

    A miss of the pointing game says nothing about whether the map peaked next to a tiny lesion (a resolution
    limit) or somewhere else entirely (it never found it); this tells the two apart. Several maximal pixels
    give the median of their distances.
    """
    a_map, mask = _check(a_map, mask)
    peak = a_map == a_map.max()
    if peak.all():
        return float("nan")
    return float(np.median(distance_transform_edt(~mask)[peak]))


def iou(a_map: np.ndarray, mask: np.ndarray, *, threshold: float = 0.5) -> float:
    """Intersection over union of the region where the map exceeds ``threshold`` with the mask."""
    a_map, mask = _check(a_map, mask)
    region = a_map > threshold
    return float(np.count_nonzero(region & mask) / np.count_nonzero(region | mask))
