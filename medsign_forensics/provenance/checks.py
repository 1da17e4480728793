"""Checking registry rows: which issuer keys are usable, and every reason a row cannot be trusted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medsign_forensics.errors import RegistryError
from medsign_forensics.provenance.entries import Issuer, KeyStatus, RegistryEntry
from medsign_forensics.provenance.keys import key_id_of, load_public_key_pem
from medsign_forensics.provenance.log import LogState
from medsign_forensics.provenance.records import ProvenanceRecord, Revocation, SignatureError, SignatureFailure, verify
from medsign_forensics.provenance.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class RowCheck:
    """The outcome of checking one registry row."""

    provenance_id: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class CheckReport:
    """What :meth:`Registry.check` found: per-issuer and per-row problems."""

    folder: Path
    issuer_problems: tuple[str, ...]
    rows: tuple[RowCheck, ...]
    issuers_checked: int = field(default=0)
    log_problems: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())
    log: LogState | None = field(default=None)  # None: a schema-1 registry without a log
    schema_version: int = field(default=SCHEMA_VERSION)
    anchor_problem: str | None = field(default=None)  # no tampering seen, but nothing signed/pinned vouches for it

    @property
    def failed_rows(self) -> tuple[RowCheck, ...]:
        return tuple(row for row in self.rows if not row.ok)

    @property
    def ok(self) -> bool:
        return (not self.issuer_problems and not self.log_problems and not self.failed_rows
                and self.anchor_problem is None)

    @property
    def tampered(self) -> bool:
        """Evidence of tampering (as opposed to a merely unanchored, i.e. unverifiable, history)."""
        return bool(self.issuer_problems or self.log_problems or self.failed_rows)

    @property
    def anchored(self) -> bool:
        """A valid signed checkpoint covers the whole log, or the auditor's pin was satisfied."""
        return self.log is not None and self.log.anchored

    @property
    def reason(self) -> str | None:
        """The first (most specific) problem on one line; None when clean."""
        if self.issuer_problems:
            return self.issuer_problems[0]
        if self.log_problems:
            return self.log_problems[0]
        for row in self.failed_rows:
            return f"row {row.provenance_id}: {row.problems[0]}"
        return self.anchor_problem

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": str(self.folder),
            "ok": self.ok,
            "reason": self.reason,
            "schema_version": self.schema_version,
            "anchored": self.anchored,
            "tampered": self.tampered,
            "anchor_problem": self.anchor_problem,
            "issuers_checked": self.issuers_checked,
            "rows_checked": len(self.rows),
            "issuer_problems": list(self.issuer_problems),
            "log": None if self.log is None else self.log.to_dict(),
            "log_problems": list(self.log_problems),
            "warnings": list(self.warnings),
            "failed_rows": [{"provenance_id": row.provenance_id, "problems": list(row.problems)}
                            for row in self.failed_rows],
        }


def usable_issuer_keys(issuers: Sequence[Issuer], trusted: Mapping[str, Ed25519PublicKey] | None,
                        ) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """Issuer keys that are well formed, match their key id and (when given) are trusted; and the others' faults."""
    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[str] = []
    for issuer in issuers:
        label = f"issuer {issuer.key_id[:16]}... ({issuer.name})"
        try:
            key = load_public_key_pem(issuer.public_key_pem)
        except RegistryError:
            problems.append(f"{label}: stored public key is not a valid Ed25519 PEM key")
            continue
        if key_id_of(key) != issuer.key_id:
            problems.append(f"{label}: key id is not the SHA-256 of its public key; the issuers table was altered")
        elif trusted is not None and issuer.key_id not in trusted:
            problems.append(f"{label} is not among the trusted public keys")
        else:
            keys[issuer.key_id] = key
    return keys, problems


def row_check(entry: RegistryEntry, keys: Mapping[str, Ed25519PublicKey]) -> RowCheck:
    problems, _, _ = row_problems(entry, keys)
    return RowCheck(entry.provenance_id, tuple(message for _, message in problems))


def row_problems(entry: RegistryEntry, keys: Mapping[str, Ed25519PublicKey],
                  ) -> tuple[list[tuple[SignatureFailure, str]], ProvenanceRecord | None, Revocation | None]:
    """Every reason the row cannot be trusted, with the verified record and revocation when they pass."""
    problems: list[tuple[SignatureFailure, str]] = []
    issuer_key = keys.get(entry.issuer_key_id)
    if issuer_key is None:
        problems.append((SignatureFailure.UNKNOWN_KEY,
                         f"issuer key {entry.issuer_key_id[:16]}... is not a valid trusted issuer"))
        return problems, None, None
    own_key = {entry.issuer_key_id: issuer_key}
    try:
        record = verify(entry.signed_record, own_key, ProvenanceRecord)
    except SignatureError as error:
        problems.append((error.failure, f"record: {error}"))
        return problems, None, None
    claimed = {
        "provenance_id": (entry.provenance_id, record.provenance_id),
        "key_hex": (entry.key_hex, record.watermark.key_hex),
        "bits": (entry.bits, record.watermark.bits),
        "issuer_key_id": (entry.issuer_key_id, record.key_id),
        "created_at": (entry.created_at, record.created_at),
    }
    for column, (stored, signed) in claimed.items():
        if stored != signed:
            problems.append((SignatureFailure.BAD_SIGNATURE,
                             f"column {column} is {stored!r} but the signed record says {signed!r}"))
    revocation = None
    if entry.signed_revocation is None:
        if entry.status is KeyStatus.REVOKED:
            problems.append((SignatureFailure.MALFORMED, "status is revoked but there is no signed revocation"))
    else:
        try:
            revocation = verify(entry.signed_revocation, own_key, Revocation)
        except SignatureError as error:
            problems.append((error.failure, f"revocation: {error}"))
        else:
            if revocation.provenance_id != entry.provenance_id or \
                    revocation.record_sha256 != entry.signed_record.sha256:
                problems.append((SignatureFailure.BAD_SIGNATURE, "the revocation belongs to another record"))
            if entry.status is not KeyStatus.REVOKED:
                problems.append((SignatureFailure.BAD_SIGNATURE,
                                 "status is active but a valid revocation is stored: it was un-revoked"))
    return problems, record, revocation
