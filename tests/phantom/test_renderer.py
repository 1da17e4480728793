"""The phantom renderer: sizes, determinism, normal studies, and that findings change only their masks."""

from __future__ import annotations

import numpy as np
import pytest

from medsign_forensics.errors import InputError, ReportError
from medsign_forensics.phantom import render_report, render_study
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone

SEED = 11


@pytest.fixture(scope="module")
def normal():
    return render_study([], seed=SEED)


def test_normal_study_is_a_valid_image_with_no_masks(normal) -> None:
    assert normal.image.dtype == np.float32 and normal.image.shape == (256, 256)
    assert 0.0 <= normal.image.min() and normal.image.max() <= 1.0
    assert normal.normal and normal.masks == () and not normal.lesion_mask.any()
    assert normal.image_u8.dtype == np.uint8
    assert np.abs(normal.image_u8 - normal.image.astype(np.float64) * 255).max() <= 0.5  # nearest grey level


def test_normal_chest_looks_like_a_chest(normal) -> None:
    """Lungs (air) are darker than the mediastinum and the abdomen; outside the body is darkest."""
    img = normal.image
    p = normal.anatomy
    mid_row = int(256 * (p.apex_y + p.dome_y_right) / 2)
    right_lung = img[mid_row, int(256 * (p.midline - 0.25)) - 2 : int(256 * (p.midline - 0.25)) + 3].mean()
    mediastinum = img[mid_row - 20 : mid_row, int(256 * p.midline) - 2 : int(256 * p.midline) + 3].mean()
    abdomen = img[int(256 * 0.93), 118:138].mean()
    assert right_lung < mediastinum - 0.1
    assert right_lung < abdomen - 0.1


def test_same_findings_and_seed_give_the_same_bits() -> None:
    findings = [Finding(FindingKind.NODULE, side=Side.LEFT), Finding(FindingKind.EFFUSION)]
    a = render_study(findings, seed=5)
    b = render_study(findings, seed=5)
    assert a.image.tobytes() == b.image.tobytes()
    assert all(np.array_equal(ma, mb) for (_, ma), (_, mb) in zip(a.masks, b.masks, strict=True))
    assert a.drawn == b.drawn


def test_different_seeds_give_different_patients() -> None:
    a, b = render_study([], seed=1), render_study([], seed=2)
    assert a.anatomy != b.anatomy
    assert np.abs(a.image - b.image).mean() > 0.01


def test_512_is_supported_and_the_mask_scales() -> None:
    finding = [Finding(FindingKind.EFFUSION, side=Side.RIGHT, severity=Severity.SEVERE)]
    small = render_study(finding, seed=3)
    big = render_study(finding, seed=3, size=512)
    assert big.image.shape == (512, 512) and big.lesion_mask.shape == (512, 512)
    assert big.lesion_mask.mean() == pytest.approx(small.lesion_mask.mean(), rel=0.1)


@pytest.mark.parametrize("size", [0, 128, 300, 1024])
def test_unsupported_size_is_an_input_error(size: int) -> None:
    with pytest.raises(InputError, match="size"):
        render_study([], seed=0, size=size)


def test_negative_seed_is_an_input_error() -> None:
    with pytest.raises(InputError, match="seed"):
        render_study([], seed=-1)


@pytest.mark.parametrize(
    "finding",
    [
        Finding(FindingKind.EFFUSION, side=Side.RIGHT, negated=True),
        Finding(FindingKind.PNEUMOTHORAX, uncertain=True),
        Finding(FindingKind.CARDIOMEGALY, negated=True),
    ],
)
def test_negated_or_uncertain_findings_draw_nothing(finding: Finding, normal) -> None:
    study = render_study([finding], seed=SEED)
    assert study.normal and study.masks == ()
    assert study.findings == (finding,)
    assert np.array_equal(study.image, normal.image)


def test_finding_changes_pixels_only_inside_its_mask(normal) -> None:
    study = render_study([Finding(FindingKind.MASS, side=Side.LEFT, zone=Zone.UPPER)], seed=SEED)
    diff = np.abs(study.image - normal.image)
    mask = study.lesion_mask
    assert diff[~mask].max() == 0.0
    assert diff[mask].mean() > 0.03


def test_a_finding_does_not_move_another_one() -> None:
    nodule = Finding(FindingKind.NODULE, side=Side.RIGHT, zone=Zone.UPPER)
    alone = render_study([nodule], seed=8)
    together = render_study([nodule, Finding(FindingKind.EFFUSION, side=Side.LEFT)], seed=8)
    assert np.array_equal(alone.masks[0].mask, together.masks[0].mask)


def test_repeated_mentions_are_drawn_once() -> None:
    findings = [Finding(FindingKind.EFFUSION), Finding(FindingKind.EFFUSION, side=Side.RIGHT, severity=Severity.MILD)]
    study = render_study(findings, seed=4)
    assert [f.side for f in study.drawn] == [Side.RIGHT]
    assert study.drawn[0].severity is Severity.MILD


def test_unspecified_attributes_are_resolved_and_recorded() -> None:
    study = render_study([Finding(FindingKind.NODULE)], seed=9)
    (drawn,) = study.drawn
    assert drawn.side in (Side.RIGHT, Side.LEFT)
    assert drawn.zone is not Zone.UNSPECIFIED and drawn.severity is not Severity.UNSPECIFIED
    assert study.to_dict()["drawn"] == [drawn.to_dict()]


def test_render_report_parses_and_draws() -> None:
    study, parsed = render_report("Large right pleural effusion. Heart size is normal.", seed=0)
    assert [f.kind for f in parsed] == [FindingKind.EFFUSION]
    assert study.drawn[0].side is Side.RIGHT and study.drawn[0].severity is Severity.SEVERE


def test_render_report_without_findings_is_normal() -> None:
    study, parsed = render_report("The lungs are clear. No pleural effusion or pneumothorax.", seed=0)
    assert study.normal and all(not f.present for f in parsed)


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_report_is_a_report_error(text: str) -> None:
    with pytest.raises(ReportError, match="empty"):
        render_report(text, seed=0)


def test_collimated_margins_are_dark_and_never_part_of_a_mask() -> None:
    from medsign_forensics.phantom.params import sample_anatomy
    from medsign_forensics.phantom.renderer import collimated

    seed = next(s for s in range(200) if sample_anatomy(s).collimation[2] > 0)  # a left margin
    study = render_study([Finding(FindingKind.EFFUSION, side=Side.BILATERAL, severity=Severity.SEVERE)], seed=seed)
    margin = collimated(study.anatomy, study.size)
    assert margin[:, 0].all()
    assert study.image[margin].max() < study.image[~margin].min() + 1e-6
    assert not (study.lesion_mask & margin).any()


def test_random_reports_keep_every_invariant() -> None:
    """Any mix of findings renders, each drawn finding has a non-empty mask, and nothing outside the masks moves."""
    rng = np.random.default_rng(0)
    kinds, sides, zones, severities = list(FindingKind), list(Side), list(Zone), list(Severity)
    for seed in range(12):
        findings = [
            Finding(
                kinds[rng.integers(len(kinds))],
                side=sides[rng.integers(len(sides))],
                zone=zones[rng.integers(len(zones))],
                severity=severities[rng.integers(len(severities))],
                negated=bool(rng.uniform() < 0.2),
            )
            for _ in range(rng.integers(1, 5))
        ]
        study = render_study(findings, seed=1000 + seed)
        assert np.isfinite(study.image).all() and 0.0 <= study.image.min() and study.image.max() <= 1.0
        assert all(mask.any() for _, mask in study.masks)
        assert all(f.present for f in study.drawn)
        outside = ~study.lesion_mask
        assert np.array_equal(study.image[outside], render_study([], seed=1000 + seed).image[outside])


def test_render_masks_are_the_studys_masks() -> None:
    from medsign_forensics.phantom.renderer import render_masks

    findings = [
        Finding(FindingKind.EFFUSION, side=Side.LEFT),
        Finding(FindingKind.NODULE, side=Side.RIGHT, zone=Zone.UPPER),
        Finding(FindingKind.CARDIOMEGALY),
    ]
    study = render_study(findings, seed=SEED)
    masks = render_masks(findings, seed=SEED)
    assert [m.finding for m in masks] == [m.finding for m in study.masks]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(masks, study.masks, strict=True))
