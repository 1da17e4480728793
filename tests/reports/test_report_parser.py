"""Findings parser on small sentences: vocabulary, negation, hedging, side, zone, severity, deduplication."""

from __future__ import annotations

import pytest

from medsign_forensics.errors import ReportError
from medsign_forensics.reports import Finding, FindingKind, Severity, Side, Zone, parse_report

K = FindingKind


def present_kinds(text: str) -> set[FindingKind]:
    return {f.kind for f in parse_report(text) if f.present}


def only(text: str, kind: FindingKind) -> Finding:
    found = [f for f in parse_report(text) if f.kind is kind]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Small pulmonary nodule in the right upper lobe.", K.NODULE),
        ("Nodular opacity in the left lower lobe.", K.NODULE),
        ("Large mass in the right hilum.", K.MASS),
        ("Right lower lobe consolidation.", K.CONSOLIDATION),
        ("Patchy opacity at the left base.", K.CONSOLIDATION),
        ("Focal airspace disease in the lingula.", K.CONSOLIDATION),
        ("Bilateral infiltrates.", K.CONSOLIDATION),
        ("Right middle lobe pneumonia.", K.CONSOLIDATION),
        ("Bibasilar atelectasis.", K.ATELECTASIS),
        ("Complete collapse of the left lung.", K.ATELECTASIS),
        ("Moderate left pleural effusion.", K.EFFUSION),
        ("Trace right pleural fluid.", K.EFFUSION),
        ("Small apical pneumothorax.", K.PNEUMOTHORAX),
        ("Cardiomegaly.", K.CARDIOMEGALY),
        ("The heart is enlarged.", K.CARDIOMEGALY),
        ("Enlarged cardiac silhouette.", K.CARDIOMEGALY),
        ("Heart size is mildly enlarged.", K.CARDIOMEGALY),
        ("Borderline heart size.", K.CARDIOMEGALY),
        ("Mild pulmonary edema.", K.EDEMA),
        ("Pulmonary vascular congestion.", K.EDEMA),
        ("Calcified granuloma in the left upper lobe.", K.GRANULOMA),
        ("Emphysema.", K.EMPHYSEMA),
        ("Hyperinflated lungs consistent with COPD.", K.EMPHYSEMA),
    ],
)
def test_vocabulary_names_the_kind(text: str, kind: FindingKind) -> None:
    assert kind in present_kinds(text)


@pytest.mark.parametrize(
    "text",
    [
        "Heart size is normal.",
        "The heart size is at the upper limits of normal.",
        "Normal heart size and mediastinal contours.",
        "The lungs are clear.",
        "No acute cardiopulmonary abnormality.",
        "Subcutaneous emphysema in the neck.",
        "Small pericardial effusion.",
        "Soft tissue edema of the arm.",
        "Stable sequela of prior granulomatous disease.",
        "Increased retrosternal airspace.",
    ],
)
def test_no_finding_where_none_is_named(text: str) -> None:
    assert present_kinds(text) == set()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("No pleural effusion.", K.EFFUSION),
        ("There is no pneumothorax.", K.PNEUMOTHORAX),
        ("Lungs are clear without consolidation.", K.CONSOLIDATION),
        ("There is no evidence of pneumothorax.", K.PNEUMOTHORAX),
        ("Negative for pneumothorax.", K.PNEUMOTHORAX),
        ("The lungs are free of focal airspace disease.", K.CONSOLIDATION),
        ("Lungs are clear of infiltrate.", K.CONSOLIDATION),
        ("The left pleural effusion has resolved.", K.EFFUSION),
        ("Interval resolution of the right lower lobe pneumonia.", K.CONSOLIDATION),
        ("Pneumothorax is no longer seen.", K.PNEUMOTHORAX),
        ("The heart is not enlarged.", K.CARDIOMEGALY),
        ("No focal consolidation, pleural effusion or pneumothorax.", K.PNEUMOTHORAX),
        ("No focal consolidation, pleural effusion or pneumothorax.", K.EFFUSION),
        ("No focal consolidation, pleural effusion or pneumothorax.", K.CONSOLIDATION),
        ("No edema or pneumothorax.", K.EDEMA),
        ("No cardiomegaly.", K.CARDIOMEGALY),
        ("There is no nodule or mass.", K.MASS),
    ],
)
def test_negation(text: str, kind: FindingKind) -> None:
    finding = only(text, kind)
    assert finding.negated and not finding.uncertain and not finding.present


@pytest.mark.parametrize(
    ("text", "negated", "present"),
    [
        ("No pleural effusion, but there is a small right pneumothorax.", K.EFFUSION, K.PNEUMOTHORAX),
        ("No pneumothorax. Small left pleural effusion.", K.PNEUMOTHORAX, K.EFFUSION),
        ("Left lower lobe atelectasis without effusion.", K.EFFUSION, K.ATELECTASIS),
        ("Cardiomegaly; no edema.", K.EDEMA, K.CARDIOMEGALY),
        ("No effusion, however there is right basilar atelectasis.", K.EFFUSION, K.ATELECTASIS),
    ],
)
def test_negation_stays_in_its_clause(text: str, negated: FindingKind, present: FindingKind) -> None:
    assert only(text, negated).negated
    assert only(text, present).present


def test_graded_finding_after_and_leaves_the_negation() -> None:
    assert only("No acute bony abnormality and mild cardiomegaly.", K.CARDIOMEGALY).present


def test_normal_limits_after_a_mention_negates_it() -> None:
    text = "Heart size and pulmonary vascular engorgement appear within limits of normal."
    assert only(text, K.EDEMA).negated


@pytest.mark.parametrize(
    "text",
    [
        "No change in the left basilar atelectasis.",
        "No significant interval change in the left basilar atelectasis.",
        "Left basilar atelectasis, not significantly changed.",
    ],
)
def test_no_change_is_not_a_negation(text: str) -> None:
    assert only(text, K.ATELECTASIS).present


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Possible right lower lobe pneumonia.", K.CONSOLIDATION),
        ("Opacity at the left base may represent atelectasis.", K.ATELECTASIS),
        ("Pneumonia cannot be excluded.", K.CONSOLIDATION),
        ("A small effusion is not excluded.", K.EFFUSION),
        ("Questionable nodule in the right upper lobe.", K.NODULE),
        ("Suspicious for a left apical mass.", K.MASS),
        ("Atelectasis versus pneumonia at the right base.", K.ATELECTASIS),
        ("Atelectasis versus pneumonia at the right base.", K.CONSOLIDATION),
        ("Findings could represent early edema.", K.EDEMA),
        ("Small bilateral pleural effusions suspected.", K.EFFUSION),
        ("Opacity suggestive of atelectasis.", K.ATELECTASIS),
    ],
)
def test_uncertainty(text: str, kind: FindingKind) -> None:
    finding = only(text, kind)
    assert finding.uncertain and not finding.negated and not finding.present


def test_hedge_does_not_reach_back_over_an_observed_finding() -> None:
    text = "Opacity at the left base may represent atelectasis."
    assert only(text, K.CONSOLIDATION).present
    assert only(text, K.ATELECTASIS).uncertain


@pytest.mark.parametrize(
    ("text", "kind", "side"),
    [
        ("Right pleural effusion.", K.EFFUSION, Side.RIGHT),
        ("Left-sided pleural effusion.", K.EFFUSION, Side.LEFT),
        ("Bilateral pleural effusions.", K.EFFUSION, Side.BILATERAL),
        ("Small right and left pleural effusions.", K.EFFUSION, Side.BILATERAL),
        ("Bibasilar atelectasis.", K.ATELECTASIS, Side.BILATERAL),
        ("Effusions in both lungs.", K.EFFUSION, Side.BILATERAL),
        ("Opacity in the left lower lobe.", K.CONSOLIDATION, Side.LEFT),
        ("Pneumothorax on the right.", K.PNEUMOTHORAX, Side.RIGHT),
        ("Lingular atelectasis.", K.ATELECTASIS, Side.LEFT),
        ("Middle lobe pneumonia.", K.CONSOLIDATION, Side.RIGHT),
        ("Pleural effusion.", K.EFFUSION, Side.UNSPECIFIED),
        ("Right basilar atelectasis and effusion.", K.EFFUSION, Side.RIGHT),
    ],
)
def test_side(text: str, kind: FindingKind, side: Side) -> None:
    assert only(text, kind).side is side


def test_cardiomegaly_has_no_side_or_zone() -> None:
    finding = only("Cardiomegaly with left basilar atelectasis.", K.CARDIOMEGALY)
    assert (finding.side, finding.zone) == (Side.UNSPECIFIED, Zone.UNSPECIFIED)


def test_sides_of_two_mentions_do_not_mix() -> None:
    findings = parse_report("Right lower lobe opacity and left pleural effusion.")
    assert only("Right lower lobe opacity and left pleural effusion.", K.CONSOLIDATION).side is Side.RIGHT
    assert [f.side for f in findings if f.kind is K.EFFUSION] == [Side.LEFT]


@pytest.mark.parametrize(
    ("text", "kind", "zone"),
    [
        ("Right upper lobe consolidation.", K.CONSOLIDATION, Zone.UPPER),
        ("Left apical pneumothorax.", K.PNEUMOTHORAX, Zone.UPPER),
        ("Nodule at the right apex.", K.NODULE, Zone.UPPER),
        ("Right middle lobe opacity.", K.CONSOLIDATION, Zone.MIDDLE),
        ("Atelectasis in the lingula.", K.ATELECTASIS, Zone.MIDDLE),
        ("Left midlung nodule.", K.NODULE, Zone.MIDDLE),
        ("Right lower lobe pneumonia.", K.CONSOLIDATION, Zone.LOWER),
        ("Opacity at the left base.", K.CONSOLIDATION, Zone.LOWER),
        ("Bibasilar atelectasis.", K.ATELECTASIS, Zone.LOWER),
        ("Retrocardiac opacity.", K.CONSOLIDATION, Zone.LOWER),
        ("Pleural effusion.", K.EFFUSION, Zone.UNSPECIFIED),
    ],
)
def test_zone(text: str, kind: FindingKind, zone: Zone) -> None:
    assert only(text, kind).zone is zone


def test_several_zones_give_one_finding_each() -> None:
    findings = [f for f in parse_report("Right upper and lower lobe opacities.") if f.kind is K.CONSOLIDATION]
    assert {(f.side, f.zone) for f in findings} == {(Side.RIGHT, Zone.UPPER), (Side.RIGHT, Zone.LOWER)}


@pytest.mark.parametrize(
    ("text", "kind", "severity"),
    [
        ("Small right pleural effusion.", K.EFFUSION, Severity.MILD),
        ("Trace left pleural effusion.", K.EFFUSION, Severity.MILD),
        ("Mild cardiomegaly.", K.CARDIOMEGALY, Severity.MILD),
        ("Heart is mildly enlarged.", K.CARDIOMEGALY, Severity.MILD),
        ("Borderline cardiomegaly.", K.CARDIOMEGALY, Severity.MILD),
        ("Moderate right pleural effusion.", K.EFFUSION, Severity.MODERATE),
        ("The heart is moderately enlarged.", K.CARDIOMEGALY, Severity.MODERATE),
        ("Large left pleural effusion.", K.EFFUSION, Severity.SEVERE),
        ("Severe cardiomegaly.", K.CARDIOMEGALY, Severity.SEVERE),
        ("Marked cardiomegaly.", K.CARDIOMEGALY, Severity.SEVERE),
        ("Right pleural effusion.", K.EFFUSION, Severity.UNSPECIFIED),
    ],
)
def test_severity(text: str, kind: FindingKind, severity: Severity) -> None:
    assert only(text, kind).severity is severity


def test_done_criterion_sentence() -> None:
    findings = parse_report("Large right pleural effusion. Heart size is normal.")
    assert findings == [Finding(K.EFFUSION, Side.RIGHT, Zone.UNSPECIFIED, Severity.SEVERE)]


def test_one_finding_per_kind_side_zone_keeping_the_asserted_one() -> None:
    findings = parse_report("No left effusion on the prior. Small left pleural effusion. Left pleural effusion.")
    effusions = [f for f in findings if f.kind is K.EFFUSION]
    assert len(effusions) == 1
    assert effusions[0].present and effusions[0].severity is Severity.MILD


def test_findings_keep_order_of_first_mention() -> None:
    kinds = [f.kind for f in parse_report("Cardiomegaly. Left pleural effusion. Right upper lobe nodule.")]
    assert kinds == [K.CARDIOMEGALY, K.EFFUSION, K.NODULE]


def test_open_i_anonymisation_tokens_are_ignored() -> None:
    assert only("There are no XXXX of a pleural effusion.", K.EFFUSION).negated


def test_numbered_impression_items_are_separate_sentences() -> None:
    text = "1. No pneumothorax 2. Small left pleural effusion."
    assert only(text, K.PNEUMOTHORAX).negated
    assert only(text, K.EFFUSION).present


def test_deterministic() -> None:
    text = "Bibasilar atelectasis and small effusions. Possible right upper lobe nodule. No pneumothorax."
    assert parse_report(text) == parse_report(text)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_report_is_an_error(text: str) -> None:
    with pytest.raises(ReportError, match="empty"):
        parse_report(text)
