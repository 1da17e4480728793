"""The normal chest: per-patient variation, the anatomy a PA film must show, and the helpers it is drawn with."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsign_forensics.phantom.anatomy import Anatomy
from medsign_forensics.phantom.params import LungChange, sample_anatomy
from medsign_forensics.phantom.raster import smooth, splat_lines
from medsign_forensics.reports.findings import Side

SEEDS = range(8)


@pytest.fixture(scope="module")
def chests() -> list[Anatomy]:
    return [Anatomy(sample_anatomy(seed), 256, seed) for seed in SEEDS]


def test_patients_are_drawn_from_the_seed() -> None:
    assert sample_anatomy(3) == sample_anatomy(3)
    assert sample_anatomy(3) != sample_anatomy(4)
    values = np.array([[v for v in sample_anatomy(s).to_dict().values() if isinstance(v, float)] for s in range(20)])
    assert (values.std(axis=0) > 0).mean() > 0.9, "most parameters vary between patients"


def test_right_dome_is_higher_and_right_lung_larger(chests: list[Anatomy]) -> None:
    for chest in chests:
        p = chest.params
        assert p.dome_y_right < p.dome_y_left  # y grows downwards
        right, left = chest.lung_masks[Side.RIGHT], chest.lung_masks[Side.LEFT]
        assert right.sum() > left.sum()
        centre = p.midline * 256
        assert np.nonzero(right)[1].mean() < centre < np.nonzero(left)[1].mean(), "patient's right on image left"


def test_heart_lies_mostly_to_the_image_right(chests: list[Anatomy]) -> None:
    for chest in chests:
        heart = chest.heart() > 0.5
        cols = np.nonzero(heart)[1]
        centre = chest.params.midline * 256
        assert (cols > centre).mean() > 0.55
        assert cols.max() - centre > 1.25 * (centre - cols.min()), "the left ventricle reaches further out"
        rows = np.nonzero(heart)[0] / 256
        assert rows.max() <= chest.params.dome_y_left + chest.params.costophrenic_depth


def test_lungs_are_air_and_the_mediastinum_is_not(chests: list[Anatomy]) -> None:
    for chest in chests:
        for side in (Side.RIGHT, Side.LEFT):
            assert chest.lung_air(side)[chest.lung_masks[side]].mean() > 0.3
        mid_col = int(chest.params.midline * 256)
        assert chest.lung_air(Side.RIGHT)[:, mid_col].max() == 0 and chest.lung_air(Side.LEFT)[:, mid_col].max() == 0


def test_vessel_markings_fade_towards_the_periphery(chests: list[Anatomy]) -> None:
    chest = chests[0]
    hx, hy = chest.params.hilum(Side.RIGHT)
    r = np.hypot(chest.x - hx, chest.y - hy)
    lung = chest.lung_masks[Side.RIGHT]
    markings = chest.markings(Side.RIGHT)
    assert markings[lung & (r < 0.1)].mean() > 2 * markings[lung & (r > 0.25)].mean()


def test_ribs_cross_the_lungs(chests: list[Anatomy]) -> None:
    chest = chests[0]
    lung = chest.lung_masks[Side.RIGHT]
    column = int((chest.params.midline - 0.25) * 256)
    profile = chest.bones[:, column][lung[:, column]]
    peaks = ((profile[1:-1] > profile[:-2]) & (profile[1:-1] >= profile[2:]) & (profile[1:-1] > 0.05)).sum()
    assert peaks >= 8, "a column through the lung meets the cortices of several ribs"


def test_altered_chest_shares_static_layers_and_redraws_the_rest(chests: list[Anatomy]) -> None:
    chest = chests[1]
    chest.bones, chest.vessel_tree  # noqa: B018 - compute the cached layers
    bigger = chest.altered(heart_scale=1.3)
    assert bigger.bones is chest.bones and bigger.vessel_tree is chest.vessel_tree
    assert bigger.heart().sum() > 1.2 * chest.heart().sum()
    inflated = chest.altered(changes={Side.RIGHT: LungChange(dome_drop=0.05, air_gain=1.2)})
    assert inflated.lung_masks[Side.RIGHT].sum() > chest.lung_masks[Side.RIGHT].sum()
    assert np.array_equal(inflated.lung_masks[Side.LEFT], chest.lung_masks[Side.LEFT])


@pytest.mark.parametrize("sigma", [2.0, 8.0, 20.0])
def test_smooth_is_close_to_a_gaussian(sigma: float) -> None:
    impulse = np.zeros((129, 129), np.float32)
    impulse[64, 64] = 1.0
    ours = smooth(impulse, sigma)
    exact = ndimage.gaussian_filter(impulse, sigma)
    assert ours.sum() == pytest.approx(1.0, abs=1e-3)
    offsets = np.arange(129) - 64
    variance = float((ours.sum(axis=0) * offsets**2).sum())
    assert variance == pytest.approx(sigma**2, rel=0.1), "same width as the Gaussian"
    assert np.abs(ours - exact).max() < 0.2 * exact.max(), "and close to its shape"


def test_splat_lines_draws_tubes_whose_peak_follows_the_amplitude() -> None:
    starts = np.array([[20.0, 30.0], [20.0, 80.0]])
    ends = np.array([[100.0, 30.0], [100.0, 80.0]])
    image = splat_lines((128, 128), starts, ends, np.array([3.0, 3.0]), np.array([0.1, 0.2]))
    assert image[30, 60] == pytest.approx(0.1, rel=0.15)
    assert image[80, 60] == pytest.approx(0.2, rel=0.15)
    assert image[55, 60] < 1e-3 and image[30, 120] < 1e-3
