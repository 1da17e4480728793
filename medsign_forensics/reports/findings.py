"""The finding: one pathology mentioned in a report, in the vocabulary shared by parser, phantom and classifier.

Sides are the PATIENT's sides (radiological convention puts the patient's right on the image left; only the
renderer converts to image coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FindingKind(str, Enum):
    """Pathologies the phantom world can render and the classifier can judge."""

    NODULE = "nodule"
    MASS = "mass"
    CONSOLIDATION = "consolidation"  # also opacity, airspace disease, infiltrate, pneumonia
    ATELECTASIS = "atelectasis"
    EFFUSION = "effusion"  # pleural effusion
    PNEUMOTHORAX = "pneumothorax"
    CARDIOMEGALY = "cardiomegaly"
    EDEMA = "edema"  # pulmonary edema / vascular congestion
    GRANULOMA = "granuloma"  # calcified granuloma
    EMPHYSEMA = "emphysema"

    @property
    def lateralised(self) -> bool:
        """Whether the finding has a side (cardiomegaly does not)."""
        return self is not FindingKind.CARDIOMEGALY


class Side(str, Enum):
    """The patient's side."""

    RIGHT = "right"
    LEFT = "left"
    BILATERAL = "bilateral"
    UNSPECIFIED = "unspecified"


class Zone(str, Enum):
    """Craniocaudal lung zone."""

    UPPER = "upper"
    MIDDLE = "middle"
    LOWER = "lower"
    UNSPECIFIED = "unspecified"


class Severity(str, Enum):
    """Size or severity, as a report words it (small/mild, moderate, large/severe)."""

    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class Finding:
    """One pathology mentioned in a report.

    ``negated`` findings were mentioned as absent ("no pleural effusion"); ``uncertain`` ones were hedged
    ("possible", "cannot exclude"). Renderers draw only findings that are neither.
    """

    kind: FindingKind
    side: Side = Side.UNSPECIFIED
    zone: Zone = Zone.UNSPECIFIED
    severity: Severity = Severity.UNSPECIFIED
    negated: bool = False
    uncertain: bool = False

    @property
    def present(self) -> bool:
        """True when the report asserts the finding (not negated, not hedged)."""
        return not (self.negated or self.uncertain)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "side": self.side.value,
            "zone": self.zone.value,
            "severity": self.severity.value,
            "negated": self.negated,
            "uncertain": self.uncertain,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Finding:
        return cls(
            kind=FindingKind(data["kind"]),
            side=Side(data.get("side", "unspecified")),
            zone=Zone(data.get("zone", "unspecified")),
            severity=Severity(data.get("severity", "unspecified")),
            negated=bool(data.get("negated", False)),
            uncertain=bool(data.get("uncertain", False)),
        )
