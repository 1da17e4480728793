"""Open-i MeSH ``major`` tags -> findings."""

from __future__ import annotations

import pytest

from medsign_forensics.reports import Finding, FindingKind, Severity, Side, Zone, parse_mesh

K = FindingKind


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("Opacity/lung/base/left", Finding(K.CONSOLIDATION, Side.LEFT, Zone.LOWER)),
        ("Pleural Effusion/bilateral/small", Finding(K.EFFUSION, Side.BILATERAL, severity=Severity.MILD)),
        ("Cardiomegaly/mild", Finding(K.CARDIOMEGALY, severity=Severity.MILD)),
        ("Cardiomegaly/borderline", Finding(K.CARDIOMEGALY, severity=Severity.MILD)),
        ("Cardiomegaly/severe", Finding(K.CARDIOMEGALY, severity=Severity.SEVERE)),
        ("Cardiac Shadow/enlarged/moderate", Finding(K.CARDIOMEGALY, severity=Severity.MODERATE)),
        ("Pulmonary Atelectasis/base/bilateral", Finding(K.ATELECTASIS, Side.BILATERAL, Zone.LOWER)),
        ("Airspace Disease/lung/middle lobe/right", Finding(K.CONSOLIDATION, Side.RIGHT, Zone.MIDDLE)),
        ("Infiltrate/lung/upper lobe/left", Finding(K.CONSOLIDATION, Side.LEFT, Zone.UPPER)),
        ("Pneumonia/lower lobe/right", Finding(K.CONSOLIDATION, Side.RIGHT, Zone.LOWER)),
        ("Consolidation/lung/base/left/moderate", Finding(K.CONSOLIDATION, Side.LEFT, Zone.LOWER, Severity.MODERATE)),
        ("Calcified Granuloma/lung/upper lobe/right", Finding(K.GRANULOMA, Side.RIGHT, Zone.UPPER)),
        ("Granuloma/lung/lingula", Finding(K.GRANULOMA, Side.LEFT, Zone.MIDDLE)),
        ("Nodule/lung/hilum/right", Finding(K.NODULE, Side.RIGHT, Zone.MIDDLE)),
        ("Opacity/lung/upper lobe/left/round", Finding(K.NODULE, Side.LEFT, Zone.UPPER)),
        ("Density/lung/base/left/round", Finding(K.NODULE, Side.LEFT, Zone.LOWER)),
        ("Mass/lung/base/right/large", Finding(K.MASS, Side.RIGHT, Zone.LOWER, Severity.SEVERE)),
        ("Pneumothorax/apex/right/small", Finding(K.PNEUMOTHORAX, Side.RIGHT, Zone.UPPER, Severity.MILD)),
        ("Pulmonary Edema/interstitial/mild", Finding(K.EDEMA, severity=Severity.MILD)),
        ("Pulmonary Congestion", Finding(K.EDEMA)),
        ("Emphysema", Finding(K.EMPHYSEMA)),
        ("Pulmonary Disease, Chronic Obstructive", Finding(K.EMPHYSEMA)),
        ("Lung/hyperdistention/mild", Finding(K.EMPHYSEMA, severity=Severity.MILD)),
        ("Opacity/retrocardiac", Finding(K.CONSOLIDATION, zone=Zone.LOWER)),
    ],
)
def test_single_tag(tag: str, expected: Finding) -> None:
    assert parse_mesh([tag]) == [expected]


@pytest.mark.parametrize(
    "tag",
    [
        "normal",
        "No Indexing",
        "Lung/hypoinflation",
        "Calcinosis/aorta",
        "Calcinosis/lung/hilum/lymph nodes/right",
        "Granulomatous Disease",
        "Cicatrix/lung/base/left",
        "Density/lung/base/left",
        "Costophrenic Angle/bilateral/blunted",
        "Subcutaneous Emphysema/neck",
        "Pericardial Effusion",
        "Cardiac Shadow/obscured/severe",
        "Granuloma/ribs/right/posterior",
        "Mass/breast/large",
        "Lung, Hyperlucent/apex",
        "Thoracic Vertebrae/degenerative",
    ],
)
def test_tags_that_name_no_finding(tag: str) -> None:
    assert parse_mesh([tag]) == []


def test_hydropneumothorax_is_air_and_fluid() -> None:
    assert {f.kind for f in parse_mesh(["Hydropneumothorax/left/large"])} == {K.PNEUMOTHORAX, K.EFFUSION}


def test_duplicates_merge_and_all_findings_are_present() -> None:
    findings = parse_mesh(["Opacity/lung/base/left", "Airspace Disease/lung/base/left/mild", "Cardiomegaly"])
    assert [(f.kind, f.side, f.zone) for f in findings] == [
        (K.CONSOLIDATION, Side.LEFT, Zone.LOWER),
        (K.CARDIOMEGALY, Side.UNSPECIFIED, Zone.UNSPECIFIED),
    ]
    assert findings[0].severity is Severity.MILD
    assert all(f.present for f in findings)


def test_single_string_is_one_tag() -> None:
    assert parse_mesh("Cardiomegaly/mild") == parse_mesh(["Cardiomegaly/mild"])


def test_whitespace_and_case_are_normalised() -> None:
    assert parse_mesh(["Subcutaneous  Emphysema"]) == []
    assert parse_mesh(["pleural effusion/Right "]) == [Finding(K.EFFUSION, Side.RIGHT)]
