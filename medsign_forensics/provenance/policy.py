"""Decision policies: how strong the evidence must be before a verdict, and which failures mean what.

A policy is a TOML file (policies/README.md documents every field). It is loaded once, validated strictly
(unknown or missing fields are errors, so a typo never silently falls back to a default) and handed to
``keys issue`` (minimum distance between keys) and to verification (thresholds and tamper rules).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from medsign_forensics.config import REPO_DIR
from medsign_forensics.errors import InputError
from medsign_forensics.key import Correction, check_length

POLICIES_DIR = REPO_DIR / "policies"
DEFAULT_POLICY = "default"
POLICY_FORMAT_VERSION = 1


class Attribution(str, Enum):
    """What the statistics alone say, before tamper rules are applied."""

    ATTRIBUTED = "attributed"
    INCONCLUSIVE = "inconclusive"
    NOT_DETECTED = "not detected"


class TamperEvent(str, Enum):
    """Things verification can observe in a file besides the watermark statistics."""

    SIGNATURE_INVALID = "signature_invalid"  # a signed document fails: altered, forged or untrusted key
    STATEMENT_MISMATCH = "statement_mismatch"  # validly signed, but about another object or record
    PIXEL_HASH_MISMATCH = "pixel_hash_mismatch"
    REPORT_HASH_MISMATCH = "report_hash_mismatch"
    TAGS_WITHOUT_WATERMARK = "tags_without_watermark"
    TAGS_DISAGREE_WITH_WATERMARK = "tags_disagree_with_watermark"
    WATERMARK_WITHOUT_TAGS = "watermark_without_tags"


class TamperAction(str, Enum):
    """The verdict a tamper event forces."""

    TAMPERED = "tampered"
    MISMATCH = "mismatch"
    IGNORE = "ignore"


# Events whose failure can never be waved through: they are the cryptographic evidence itself.
_NEVER_IGNORED = (TamperEvent.SIGNATURE_INVALID, TamperEvent.STATEMENT_MISMATCH, TamperEvent.PIXEL_HASH_MISMATCH)


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A validated decision policy."""

    name: str
    description: str
    key_bits: int
    min_hamming_distance: int
    family_wise_fpr: float
    inconclusive_p: float
    correction: Correction
    tamper: Mapping[TamperEvent, TamperAction] = field(repr=False)
    source: Path | None = None

    def __post_init__(self) -> None:
        check_length(self.key_bits)
        if not 1 <= self.min_hamming_distance <= self.key_bits // 4:
            raise InputError(f"keys.min_hamming_distance must be between 1 and {self.key_bits // 4} for "
                             f"{self.key_bits}-bit keys (larger leaves too few keys to issue); "
                             f"got {self.min_hamming_distance}")
        if not 0 < self.family_wise_fpr < 1 or not math.isfinite(self.family_wise_fpr):
            raise InputError(f"attribution.family_wise_fpr must be in (0, 1); got {self.family_wise_fpr}")
        if not self.family_wise_fpr <= self.inconclusive_p < 1:
            raise InputError("attribution.inconclusive_p must be at least family_wise_fpr and below 1; "
                             f"got {self.inconclusive_p}")
        missing = set(TamperEvent) - set(self.tamper)
        if missing:
            raise InputError(f"tamper rules missing for: {', '.join(sorted(e.value for e in missing))}")
        for event in _NEVER_IGNORED:
            if self.tamper[event] is TamperAction.IGNORE:
                raise InputError(f"tamper.{event.value} cannot be 'ignore': it is the cryptographic evidence")
        object.__setattr__(self, "tamper", MappingProxyType(dict(self.tamper)))

    def action(self, event: TamperEvent) -> TamperAction:
        return self.tamper[event]

    def classify(self, family_wise_p: float) -> Attribution:
        """Attributed at or below the target family-wise FPR; inconclusive up to ``inconclusive_p``."""
        if family_wise_p <= self.family_wise_fpr:
            return Attribution.ATTRIBUTED
        if family_wise_p <= self.inconclusive_p:
            return Attribution.INCONCLUSIVE
        return Attribution.NOT_DETECTED

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data, for JSON reports (which policy produced this verdict)."""
        return {
            "name": self.name,
            "source": None if self.source is None else str(self.source),
            "keys": {"bits": self.key_bits, "min_hamming_distance": self.min_hamming_distance},
            "attribution": {"family_wise_fpr": self.family_wise_fpr, "inconclusive_p": self.inconclusive_p,
                            "correction": self.correction.value},
            "tamper": {event.value: action.value for event, action in self.tamper.items()},
        }


def policy_path(name_or_path: str | Path | None) -> Path:
    """A shipped policy's name (``default``, ``strict``) or a path to a TOML file."""
    if name_or_path is None:
        name_or_path = DEFAULT_POLICY
    text = str(name_or_path)
    if "/" not in text and "\\" not in text and not text.endswith(".toml"):
        path = POLICIES_DIR / f"{text}.toml"
        if not path.is_file():
            shipped = sorted(p.stem for p in POLICIES_DIR.glob("*.toml"))
            raise InputError(f"unknown policy {text!r}; use one of {shipped} or a path to a .toml file")
        return path
    return Path(text)


def load_policy(name_or_path: str | Path | None = None) -> Policy:
    """Load and validate a policy; every problem is an InputError naming the file and the field."""
    path = policy_path(name_or_path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise InputError("policy file not found", path=path) from None
    except OSError as error:
        raise InputError(f"cannot read the policy file: {error.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"the policy is not valid TOML: {error}", path=path) from None
    try:
        return policy_from_dict(document, source=path)
    except InputError as error:
        raise InputError(str(error), path=path) from None


def policy_from_dict(document: Mapping[str, Any], *, source: Path | None = None) -> Policy:
    """Build a :class:`Policy` from the parsed TOML tables."""
    _only(document, {"format_version", "name", "description", "keys", "attribution", "tamper"}, "the policy")
    if document.get("format_version") != POLICY_FORMAT_VERSION:
        raise InputError(f"format_version must be {POLICY_FORMAT_VERSION}; got {document.get('format_version')!r}")
    keys = _table(document, "keys", {"bits", "min_hamming_distance"})
    attribution = _table(document, "attribution", {"family_wise_fpr", "inconclusive_p", "correction"})
    tamper = _table(document, "tamper", {event.value for event in TamperEvent})
    return Policy(
        name=_string(document, "name", "name"),
        description=_string(document, "description", "description"),
        key_bits=_integer(keys, "bits", "keys.bits"),
        min_hamming_distance=_integer(keys, "min_hamming_distance", "keys.min_hamming_distance"),
        family_wise_fpr=_number(attribution, "family_wise_fpr", "attribution.family_wise_fpr"),
        inconclusive_p=_number(attribution, "inconclusive_p", "attribution.inconclusive_p"),
        correction=_choice(Correction, attribution, "correction", "attribution.correction"),
        tamper={TamperEvent(name): _choice(TamperAction, tamper, name, f"tamper.{name}") for name in tamper},
        source=source,
    )


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise InputError(f"unknown field(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")


def _table(document: Mapping[str, Any], name: str, fields: set[str]) -> Mapping[str, Any]:
    table = document.get(name)
    if not isinstance(table, dict):
        raise InputError(f"the policy needs a [{name}] table")
    _only(table, fields, f"[{name}]")
    missing = fields - set(table)
    if missing:
        raise InputError(f"[{name}] lacks field(s) {sorted(missing)}")
    return table


def _string(table: Mapping[str, Any], name: str, where: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where} must be a non-empty string")
    return value


def _integer(table: Mapping[str, Any], name: str, where: str) -> int:
    value = table.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{where} must be an integer; got {value!r}")
    return value


def _number(table: Mapping[str, Any], name: str, where: str) -> float:
    value = table.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"{where} must be a number; got {value!r}")
    return float(value)


def _choice(enum: type[Enum], table: Mapping[str, Any], name: str, where: str) -> Any:
    value = table.get(name)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum)
        raise InputError(f"{where} must be one of {allowed}; got {value!r}") from None
