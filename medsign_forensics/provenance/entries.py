"""The registry's rows as Python values: issuers, entries, verified entries and the candidates for matching.

Rows are read as stored; nothing here checks a signature (:mod:`medsign_forensics.provenance.checks` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.key import hex_matrix, match_counts
from medsign_forensics.provenance.canonical import from_base64, parse_canonical, to_base64
from medsign_forensics.provenance.records import ProvenanceRecord, Revocation, SignedDocument


class KeyStatus(str, Enum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Issuer:
    """An issuer public key held by the registry."""

    key_id: str
    name: str
    public_key_pem: str
    added_at: str


@dataclass(frozen=True)
class RegistryEntry:
    """One row of the registry, as stored. Use :meth:`Registry.verify_entry` before trusting it."""

    provenance_id: str
    key_hex: str
    bits: int
    issuer_key_id: str
    status: KeyStatus
    signed_record: SignedDocument
    signed_revocation: SignedDocument | None
    created_at: str

    @property
    def key(self) -> np.ndarray:
        return key_matrix([self.key_hex], self.bits)[0]

    def claimed_record(self) -> ProvenanceRecord:
        """The record parsed WITHOUT checking its signature: for display only."""
        return ProvenanceRecord.from_dict(parse_canonical(self.signed_record.payload, "provenance record"))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output: the stored record and signatures, exactly as held."""
        return {
            "provenance_id": self.provenance_id,
            "key_hex": self.key_hex,
            "bits": self.bits,
            "issuer_key_id": self.issuer_key_id,
            "status": self.status.value,
            "created_at": self.created_at,
            "record": self.signed_record.text,
            "signature": to_base64(self.signed_record.signature),
            "revocation": None if self.signed_revocation is None else self.signed_revocation.text,
            "revocation_signature": (None if self.signed_revocation is None
                                     else to_base64(self.signed_revocation.signature)),
        }


@dataclass(frozen=True)
class VerifiedEntry:
    """A registry row whose record (and revocation, if any) carry valid issuer signatures."""

    entry: RegistryEntry
    record: ProvenanceRecord
    revocation: Revocation | None

    @property
    def status(self) -> KeyStatus:
        return self.entry.status


@dataclass(frozen=True)
class Candidates:
    """Every registered key of one length (active and revoked), for matching extracted bits."""

    bits: int
    entries: tuple[RegistryEntry, ...]
    keys: np.ndarray  # (N, bits) uint8 0/1, row i belongs to entries[i]

    def __len__(self) -> int:
        return len(self.entries)

    def match_counts(self, extracted: np.ndarray) -> np.ndarray:
        """Number of agreeing bits between ``extracted`` and every key, shape (N,)."""
        return match_counts(np.ravel(extracted), self.keys)


def entry_from_row(row: Sequence[Any]) -> RegistryEntry:
    (provenance_id, key_hex, bits, issuer_key_id, status, record, signature, revocation,
     revocation_signature, created_at) = row
    try:
        status_value = KeyStatus(status)
    except ValueError:
        raise RegistryError(f"registry row {provenance_id} has unknown status {status!r}") from None
    signed_revocation = None
    if revocation is not None:
        signed_revocation = SignedDocument(payload=stored_bytes(revocation),
                                           signature=signature_bytes(revocation_signature))
    signed_record = SignedDocument(payload=stored_bytes(record), signature=signature_bytes(signature))
    return RegistryEntry(provenance_id=provenance_id, key_hex=key_hex, bits=int(bits), issuer_key_id=issuer_key_id,
                         status=status_value, signed_record=signed_record, signed_revocation=signed_revocation,
                         created_at=created_at)


def stored_bytes(text: str) -> bytes:
    """The stored JSON text as bytes. Canonical JSON is ASCII; anything else fails verify(), as it should."""
    return text.encode("utf-8")


def signature_bytes(text: str | None) -> bytes:
    """Stored base64 signature; damaged text becomes an empty signature, which verify() reports as malformed."""
    try:
        return from_base64(text or "", "signature")
    except InputError:
        return b""


def key_matrix(hexes: Sequence[str], bits: int) -> np.ndarray:
    """(N, bits) key matrix of stored hex keys; a damaged key is a registry fault, not the caller's input."""
    try:
        return hex_matrix(hexes, bits)
    except InputError as error:
        raise RegistryError(f"the registry holds a damaged key ({error}); run `medsign keys check`") from None
