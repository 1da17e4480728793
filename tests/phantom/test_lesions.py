"""Where every finding kind lands, for every side, zone and severity, and that its mask is what changed.

Radiological convention: the patient's RIGHT is on the IMAGE LEFT (low column numbers).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from medsign_forensics.phantom import PhantomStudy, render_study
from medsign_forensics.phantom.anatomy import Anatomy
from medsign_forensics.phantom.placement import finding_stream, resolve
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone

K = FindingKind
SEED = 21
LATERALISED = [kind for kind in FindingKind if kind.lateralised]
IN_LUNG = [K.NODULE, K.MASS, K.CONSOLIDATION, K.ATELECTASIS, K.GRANULOMA, K.EFFUSION, K.PNEUMOTHORAX, K.EDEMA]
ZONED = [K.NODULE, K.MASS, K.CONSOLIDATION, K.GRANULOMA, K.ATELECTASIS]


@cache
def render(kind: FindingKind, side: Side = Side.UNSPECIFIED, zone: Zone = Zone.UNSPECIFIED,
           severity: Severity = Severity.MODERATE, seed: int = SEED, size: int = 256) -> PhantomStudy:
    return render_study([Finding(kind, side=side, zone=zone, severity=severity)], seed=seed, size=size)


@cache
def normal(seed: int = SEED, size: int = 256) -> PhantomStudy:
    return render_study([], seed=seed, size=size)


@cache
def anatomy(seed: int = SEED, size: int = 256) -> Anatomy:
    study = normal(seed, size)
    return Anatomy(study.anatomy, size, seed)


def image_left_share(study: PhantomStudy) -> float:
    """Fraction of the mask on the image-left half (the patient's right)."""
    mask = study.lesion_mask
    centre = study.anatomy.midline * study.size
    cols = np.nonzero(mask)[1]
    return float((cols < centre).mean())


def centroid_y(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[0].mean()) / mask.shape[0]


def lung_rows(side: Side) -> tuple[int, int]:
    rows = np.nonzero(anatomy().lung_field(side) > 0.5)[0]
    return int(rows.min()), int(rows.max())


# -- side ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LATERALISED)
@pytest.mark.parametrize("side,share", [(Side.RIGHT, (0.95, 1.0)), (Side.LEFT, (0.0, 0.05))])
def test_side_puts_the_mask_on_the_right_half(kind: FindingKind, side: Side, share: tuple[float, float]) -> None:
    study = render(kind, side)
    assert study.drawn[0].side is side
    assert study.lesion_mask.sum() > 0
    assert share[0] <= image_left_share(study) <= share[1]


@pytest.mark.parametrize("kind", LATERALISED)
def test_bilateral_findings_cover_both_lungs(kind: FindingKind) -> None:
    study = render(kind, Side.BILATERAL)
    assert study.drawn[0].side is Side.BILATERAL
    assert 0.25 <= image_left_share(study) <= 0.75
    mask = study.lesion_mask
    for side in (Side.RIGHT, Side.LEFT):
        assert (mask & (anatomy().lung_field(side) > 0.02)).sum() > 0.2 * mask.sum(), f"nothing in the {side} lung"


@pytest.mark.parametrize("kind", [K.EDEMA, K.EMPHYSEMA])
def test_edema_and_emphysema_are_bilateral_unless_a_side_is_given(kind: FindingKind) -> None:
    study = render(kind)
    assert study.drawn[0].side is Side.BILATERAL
    assert 0.25 <= image_left_share(study) <= 0.75


def test_unspecified_side_is_drawn_from_the_seed() -> None:
    sides = [resolve(Finding(K.NODULE), finding_stream(seed, K.NODULE, 0)).side for seed in range(40)]
    assert set(sides) == {Side.RIGHT, Side.LEFT}
    assert render(K.NODULE, seed=3).drawn[0].side is sides[3], "the renderer draws the side it resolved"


@pytest.mark.parametrize("kind", IN_LUNG)
@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
def test_intrapulmonary_findings_lie_in_their_lung(kind: FindingKind, side: Side) -> None:
    study = render(kind, side)
    lung = ndimage.binary_dilation(anatomy().lung_field(side) > 0.02, iterations=2)
    mask = study.lesion_mask
    assert (mask & lung).sum() >= 0.95 * mask.sum()


# -- what changed ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FindingKind))
def test_the_mask_is_exactly_where_the_image_changed(kind: FindingKind) -> None:
    study = render(kind, Side.LEFT if kind.lateralised else Side.UNSPECIFIED)
    diff = np.abs(study.image - normal().image)
    mask = study.lesion_mask
    assert diff[~mask].max() == 0.0, "pixels outside the mask changed"
    assert diff[mask].mean() > 0.015, "the lesion barely changed its own mask"
    assert (diff[mask] > 1.0 / 255).mean() > 0.3


# -- position by kind -------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
def test_effusion_fills_the_bottom_of_its_lung(side: Side) -> None:
    study = render(K.EFFUSION, side, severity=Severity.MODERATE)
    top, bottom = lung_rows(side)
    rows = np.nonzero(study.lesion_mask)[0]
    assert rows.max() >= bottom - 3, "the fluid must reach the costophrenic angle"
    assert rows.min() > top + 0.5 * (bottom - top), "a moderate effusion stays in the lower half"
    assert centroid_y(study.lesion_mask) > 0.55


def test_small_effusion_blunts_the_costophrenic_angle_only() -> None:
    study = render(K.EFFUSION, Side.RIGHT, severity=Severity.MILD)
    top, bottom = lung_rows(Side.RIGHT)
    rows, cols = np.nonzero(study.lesion_mask)
    assert rows.min() > top + 0.75 * (bottom - top)
    # The angle is lateral: most of the fluid lies in the outer half of the image-left lung.
    centre = study.anatomy.midline * 256
    assert np.median(cols) < centre - 0.2 * 256


@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
def test_pneumothorax_rim_is_apical_and_lateral(side: Side) -> None:
    study = render(K.PNEUMOTHORAX, side)
    top, bottom = lung_rows(side)
    rows, cols = np.nonzero(study.lesion_mask)
    assert rows.min() <= top + 4, "air collects at the apex"
    assert centroid_y(study.lesion_mask) < centroid_y(render(K.EFFUSION, side).lesion_mask)
    # The rim hugs the lateral wall, away from the mediastinum.
    centre = study.anatomy.midline * 256
    assert np.median(np.abs(cols - centre)) > 0.2 * 256


def test_cardiomegaly_enlarges_the_heart_to_the_image_right() -> None:
    study = render(K.CARDIOMEGALY)
    heart = anatomy().heart() > 0.5
    mask = study.lesion_mask
    assert study.drawn[0].side is Side.UNSPECIFIED
    assert (mask & heart).sum() >= 0.95 * heart.sum(), "the mask is the whole enlarged silhouette"
    assert mask.sum() > 1.2 * heart.sum()
    grown = mask & ~heart
    centre = study.anatomy.midline * 256
    assert np.nonzero(grown)[1].mean() > centre, "a big heart grows mostly to the patient's left"


def test_edema_is_perihilar_and_central() -> None:
    study = render(K.EDEMA, severity=Severity.SEVERE)
    p = study.anatomy
    rows, cols = np.nonzero(study.lesion_mask)
    hilum_row = 256 * (p.hilum_y_right + p.hilum_y_left) / 2
    assert abs(rows.mean() - hilum_row) < 0.12 * 256


def test_emphysema_lowers_and_flattens_the_domes() -> None:
    study = render(K.EMPHYSEMA, severity=Severity.SEVERE)
    normal_lungs = (anatomy().lung_field(Side.RIGHT) > 0.5) | (anatomy().lung_field(Side.LEFT) > 0.5)
    mask = study.lesion_mask
    assert np.nonzero(mask)[0].max() > np.nonzero(normal_lungs)[0].max(), "the lungs reach lower"
    assert (mask & normal_lungs).sum() >= 0.98 * normal_lungs.sum()
    lungs = normal_lungs & mask
    assert study.image[lungs].mean() < normal().image[lungs].mean(), "hyperlucent"


# -- zone ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ZONED)
@pytest.mark.parametrize("side", [Side.RIGHT, Side.LEFT])
def test_zones_order_from_apex_to_base(kind: FindingKind, side: Side) -> None:
    severity = Severity.SEVERE if kind is K.ATELECTASIS else Severity.MODERATE
    ys = [centroid_y(render(kind, side, zone, severity).lesion_mask) for zone in (Zone.UPPER, Zone.MIDDLE, Zone.LOWER)]
    assert ys[0] < ys[1] < ys[2]


@pytest.mark.parametrize("kind", [K.NODULE, K.GRANULOMA, K.MASS])
@pytest.mark.parametrize("zone", [Zone.UPPER, Zone.MIDDLE, Zone.LOWER])
def test_small_lesions_sit_in_their_zone(kind: FindingKind, zone: Zone) -> None:
    study = render(kind, Side.RIGHT, zone)
    index = (Zone.UPPER, Zone.MIDDLE, Zone.LOWER).index(zone)
    lo, hi = anatomy().zone_band(Side.RIGHT, index)
    y = anatomy().y[study.lesion_mask].mean()
    assert lo - 0.03 <= y <= hi + 0.03


@pytest.mark.parametrize("kind", [K.EFFUSION, K.PNEUMOTHORAX])
def test_fluid_falls_and_air_rises_whatever_the_zone(kind: FindingKind) -> None:
    study = render(kind, Side.LEFT, Zone.MIDDLE)
    assert study.drawn[0].zone is (Zone.LOWER if kind is K.EFFUSION else Zone.UPPER)


# -- severity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FindingKind))
def test_severity_increases_the_area(kind: FindingKind) -> None:
    side = Side.RIGHT if kind.lateralised else Side.UNSPECIFIED
    size = 512 if kind is K.GRANULOMA else 256
    areas = [int(render(kind, side, severity=s, size=size).lesion_mask.sum())
             for s in (Severity.MILD, Severity.MODERATE, Severity.SEVERE)]
    assert 0 < areas[0] < areas[1] < areas[2]


def test_nodule_is_small_and_round_and_a_mass_is_larger() -> None:
    nodule = render(K.NODULE, Side.RIGHT, Zone.MIDDLE, Severity.SEVERE).lesion_mask
    mass = render(K.MASS, Side.RIGHT, Zone.MIDDLE, Severity.MILD).lesion_mask
    assert ndimage.label(nodule)[1] == 1
    # 15 mm at 256 px over a 380 mm field is about 10 px across.
    assert nodule.sum() < np.pi * 6**2
    assert mass.sum() > 3 * nodule.sum()


def test_granuloma_is_tiny_and_very_dense() -> None:
    study = render(K.GRANULOMA, Side.LEFT, Zone.UPPER, Severity.MODERATE)
    mask = study.lesion_mask
    assert 1 <= mask.sum() <= 30
    assert study.image[mask].mean() - normal().image[mask].mean() > 0.08
    lungs = anatomy().lung_masks[Side.LEFT]
    assert study.image[mask].max() >= np.percentile(normal().image[lungs], 99.5), "as bright as bone"
