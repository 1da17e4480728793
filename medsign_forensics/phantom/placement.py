"""Which findings of a report the phantom draws, where, and in what order (:mod:`.lesions` draws each one).

A report often names one finding twice (findings and impression); a finding implied by a more specific one is
dropped. What the report leaves open is drawn from the finding's own random stream: a random side (edema and
emphysema: both lungs), the kind's typical zone, a random severity. Findings that redraw anatomy go first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from medsign_forensics.phantom.anatomy import Anatomy
from medsign_forensics.phantom.lesions import DRAWERS, ZONES, Lesion
from medsign_forensics.phantom.params import LungChange, stream
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone

STREAM_FINDINGS = 100

#: Kinds drawn in both lungs unless the report names a side.
BILATERAL_BY_DEFAULT = frozenset({FindingKind.EDEMA, FindingKind.EMPHYSEMA})

#: Where a kind usually lies when the report gives no zone: (upper, middle, lower) probabilities.
TYPICAL_ZONE: dict[FindingKind, tuple[float, float, float]] = {
    FindingKind.NODULE: (0.35, 0.35, 0.30),
    FindingKind.MASS: (0.5, 0.3, 0.2),
    FindingKind.CONSOLIDATION: (0.2, 0.3, 0.5),
    FindingKind.ATELECTASIS: (0.0, 0.25, 0.75),
    FindingKind.GRANULOMA: (0.4, 0.35, 0.25),
}

#: Kinds whose zone is fixed by physics rather than by the report (fluid falls, air rises).
FIXED_ZONE = {FindingKind.EFFUSION: Zone.LOWER, FindingKind.PNEUMOTHORAX: Zone.UPPER}

#: Kinds drawn by redrawing the chest's anatomy rather than adding a lesion to it.
ANATOMICAL = frozenset({FindingKind.CARDIOMEGALY, FindingKind.EMPHYSEMA})
SEVERITIES = (Severity.MILD, Severity.MODERATE, Severity.SEVERE)


def _subsumes(general: Finding, specific: Finding) -> bool:
    """Whether ``general`` says nothing that ``specific`` does not (so drawing both would draw it twice)."""
    if general.kind is not specific.kind:
        return False
    pairs = ((general.side, specific.side), (general.zone, specific.zone), (general.severity, specific.severity))
    return all(g.value == "unspecified" or g == s for g, s in pairs)


def select_findings(findings: Sequence[Finding]) -> list[Finding]:
    """The present findings to draw, without repeats: a report often names one finding in its findings and
    again, less precisely, in its impression; a finding implied by a more specific one is dropped."""
    present = [f for f in findings if f.present]
    kept: list[Finding] = []
    for i, f in enumerate(present):
        later_or_more_specific = any(
            _subsumes(f, g) and (not _subsumes(g, f) or j < i) for j, g in enumerate(present) if j != i
        )
        if not later_or_more_specific:
            kept.append(f)
    return kept


def resolve(finding: Finding, rng: np.random.Generator) -> Finding:
    """Fill in what the report left open: side, zone and severity, drawn from the finding's own stream."""
    kind = finding.kind
    side = finding.side
    if not kind.lateralised:
        side = Side.UNSPECIFIED
    elif side is Side.UNSPECIFIED:
        side = Side.BILATERAL if kind in BILATERAL_BY_DEFAULT else (Side.RIGHT if rng.uniform() < 0.5 else Side.LEFT)
    zone = finding.zone
    if kind in FIXED_ZONE:
        zone = FIXED_ZONE[kind]
    elif kind in TYPICAL_ZONE:
        if zone is Zone.UNSPECIFIED:
            zone = ZONES[int(rng.choice(3, p=TYPICAL_ZONE[kind]))]
    else:
        zone = Zone.UNSPECIFIED  # drawn over the whole lung or heart
    severity = finding.severity
    if severity is Severity.UNSPECIFIED:
        severity = SEVERITIES[int(rng.choice(3, p=(0.35, 0.45, 0.2)))]
    return replace(finding, side=side, zone=zone, severity=severity)


def finding_stream(seed: int, kind: FindingKind, occurrence: int) -> np.random.Generator:
    """Each finding has its own stream, so adding a finding never moves another one."""
    return stream(seed, STREAM_FINDINGS + list(FindingKind).index(kind), occurrence)


def draw_findings(findings: Sequence[Finding], anatomy: Anatomy) -> list[Lesion]:
    """Select, resolve and draw the present findings of a report into ``anatomy`` (in the report's order).

    Findings that redraw anatomy (cardiomegaly, emphysema) are drawn first, against the normal chest; the
    focal findings are then drawn into the chest as those redrew it (fluid fills the emphysematous lung down to
    its lowered dome; a consolidation stops at the enlarged heart's border).
    """
    planned = []
    seen: dict[FindingKind, int] = {}
    for finding in select_findings(findings):
        occurrence = seen.get(finding.kind, 0)
        seen[finding.kind] = occurrence + 1
        rng = finding_stream(anatomy.seed, finding.kind, occurrence)
        planned.append((resolve(finding, rng), rng))
    drawn: dict[int, Lesion] = {}
    heart_scale = 1.0
    changes: dict[Side, LungChange] = {}
    for index, (finding, rng) in enumerate(planned):
        if finding.kind in ANATOMICAL:
            lesion = DRAWERS[finding.kind](finding, anatomy, rng)
            heart_scale = max(heart_scale, lesion.heart_scale or 1.0)
            changes.update(lesion.lung_changes or {})
            drawn[index] = lesion
    chest = anatomy.altered(heart_scale=heart_scale, changes=changes) if drawn else anatomy
    for index, (finding, rng) in enumerate(planned):
        if index not in drawn:
            drawn[index] = DRAWERS[finding.kind](finding, chest, rng)
    return [drawn[index] for index in range(len(planned))]
