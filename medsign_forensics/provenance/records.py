"""Signed provenance documents: the deployment's record, the per-image statement, and revocations.

Every document is a flat-ish JSON object with a ``type`` (domain separation: a signature over one kind of
document can never pass as another kind) and a ``key_id`` naming the Ed25519 key that signs it. The signature
is Ed25519 over the document's canonical JSON bytes (:mod:`medsign_forensics.provenance.canonical`); those
exact bytes are what the registry and the DICOM private block store, next to the 64-byte signature.

* :class:`ProvenanceRecord` — issued once per deployment by the registry and never changed afterwards, so the
  copy embedded in every generated DICOM file is byte-identical to the registry's. Status (active/revoked) is
  therefore not a field of the record: it lives in the registry row and a revocation is its own signed
  :class:`Revocation` document.
* :class:`ImageStatement` — one per generated image: SOP Instance UID, pixel and report digests, the model
  weights digest, and the SHA-256 of the record it belongs to.
* :class:`Revocation` — withdraws a provenance ID; signed by an issuer key.
* :class:`Checkpoint` — the registry log's size and head hash, signed by an issuer (see
  :mod:`medsign_forensics.provenance.log`).

``sign(document, signer)`` returns a :class:`SignedDocument`; ``verify(signed, public_keys, DocumentClass)``
returns the typed document or raises one :class:`SignatureError` whose ``failure`` says precisely why.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medsign_forensics import __version__
from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.key import check_length
from medsign_forensics.provenance.canonical import canonical_json, parse_canonical, sha256_hex
from medsign_forensics.provenance.keys import SIGNATURE_ALGORITHM, Signer, signature_is_valid

DOCUMENT_VERSION = 1
WATERMARK_ALGORITHM = "medsign-v1"
PIXEL_HASH_METHOD = "medsign-pixels-v1"
PROVENANCE_ID_PREFIX = "msp-"
_PROVENANCE_ID = re.compile(r"^msp-[a-z2-7]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
SIGNATURE_BYTES = 64


class DocumentType(str, Enum):
    """The ``type`` field of each signed document."""

    RECORD = "medsign.provenance-record"
    STATEMENT = "medsign.image-statement"
    REVOCATION = "medsign.revocation"
    CHECKPOINT = "medsign.checkpoint"

    @property
    def label(self) -> str:
        """Plain-English name for messages: "provenance record", "image statement", "revocation"."""
        return {"medsign.provenance-record": "provenance record", "medsign.image-statement": "image statement",
                "medsign.revocation": "revocation", "medsign.checkpoint": "checkpoint"}[self.value]


class SignatureFailure(str, Enum):
    """Why a signed document did not verify."""

    MALFORMED = "malformed"  # not canonical JSON, wrong fields, wrong type, signature of the wrong size
    UNKNOWN_KEY = "unknown-key"  # signed by a key id that is not among the trusted public keys
    BAD_SIGNATURE = "bad-signature"  # the signature does not match the bytes: altered or forged


class SignatureError(RegistryError):
    """A signed provenance document failed verification; ``failure`` says how."""

    def __init__(self, message: str, *, failure: SignatureFailure, path: str | None = None) -> None:
        self.failure = failure
        super().__init__(message, path=path)


def new_provenance_id() -> str:
    """``msp-`` + 16 lower-case base32 characters: 80 random bits from the OS, no padding, unambiguous letters."""
    return PROVENANCE_ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def utc_now() -> str:
    """Current time as RFC 3339 UTC with second precision, e.g. ``2025-01-31T09:15:02Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_provenance_id(value: str) -> str:
    if not isinstance(value, str) or not _PROVENANCE_ID.match(value):
        raise InputError(f"{value!r} is not a provenance ID (expected 'msp-' and 16 base32 characters)")
    return value


def _text(fields: Mapping[str, Any], name: str, *, max_chars: int = 64) -> str:
    """A non-empty single-line string; no backslash, which DICOM reads as a value separator."""
    value = fields.get(name)
    if (not isinstance(value, str) or not value.strip() or len(value) > max_chars or "\\" in value
            or any(ord(c) < 32 for c in value)):
        raise InputError(f"field {name!r} must be a non-empty single line of at most {max_chars} characters "
                         "without backslashes")
    return value


def _matching(fields: Mapping[str, Any], name: str, pattern: re.Pattern[str], expected: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise InputError(f"field {name!r} must be {expected}; got {value!r}")
    return value


def _exact_keys(fields: Mapping[str, Any], expected: set[str], what: str) -> None:
    missing, extra = expected - set(fields), set(fields) - expected
    if missing or extra:
        raise InputError(f"the {what} has missing fields {sorted(missing)} or unknown fields {sorted(extra)}")


def _header(fields: Mapping[str, Any], kind: DocumentType) -> None:
    if fields.get("type") != kind.value:
        raise InputError(f"expected a {kind.value!r} document, found type {fields.get('type')!r}")
    if fields.get("version") != DOCUMENT_VERSION:
        raise InputError(f"unsupported {kind.value} version {fields.get('version')!r}; "
                         f"this software reads version {DOCUMENT_VERSION}")


@dataclass(frozen=True, kw_only=True)
class WatermarkPayload:
    """What the deployment's images carry: the key (hex, most significant bit first) and its length."""

    key_hex: str
    bits: int
    algorithm: str = WATERMARK_ALGORITHM

    def __post_init__(self) -> None:
        check_length(self.bits)
        if not _HEX.match(self.key_hex) or len(self.key_hex) * 4 != self.bits:
            raise InputError(f"watermark key {self.key_hex!r} is not {self.bits // 4} lower-case hex digits")
        _text({"algorithm": self.algorithm}, "algorithm")

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "bits": self.bits, "key_hex": self.key_hex}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> WatermarkPayload:
        if not isinstance(fields, Mapping):
            raise InputError("field 'watermark' must be an object")
        _exact_keys(fields, {"algorithm", "bits", "key_hex"}, "watermark payload")
        bits = fields["bits"]
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise InputError("field 'bits' must be an integer")
        return cls(key_hex=fields["key_hex"], bits=bits, algorithm=_text(fields, "algorithm"))


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """The generator a deployment runs: name, version and the SHA-256 of its (watermarked) weights."""

    name: str
    version: str
    weights_sha256: str

    def __post_init__(self) -> None:
        _text({"name": self.name}, "name")
        _text({"version": self.version}, "version")
        _matching({"weights_sha256": self.weights_sha256}, "weights_sha256", _SHA256, "64 lower-case hex digits")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "weights_sha256": self.weights_sha256}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ModelInfo:
        if not isinstance(fields, Mapping):
            raise InputError("field 'model' must be an object")
        _exact_keys(fields, {"name", "version", "weights_sha256"}, "model description")
        return cls(name=fields["name"], version=fields["version"], weights_sha256=fields["weights_sha256"])


@dataclass(frozen=True, kw_only=True)
class ProvenanceRecord:
    """A deployment's identity, as issued and signed by the registry's issuer."""

    kind: ClassVar[DocumentType] = DocumentType.RECORD

    provenance_id: str
    watermark: WatermarkPayload
    issuer: str
    key_id: str
    model: ModelInfo
    deployment: str
    created_at: str
    software_version: str = __version__
    signature_algorithm: str = SIGNATURE_ALGORITHM
    version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        self.validate(self.to_dict())

    @staticmethod
    def validate(fields: Mapping[str, Any]) -> None:
        _header(fields, DocumentType.RECORD)
        _exact_keys(fields, {"type", "version", "provenance_id", "watermark", "issuer", "key_id",
                             "signature_algorithm", "model", "deployment", "software_version", "created_at"},
                    "provenance record")
        check_provenance_id(fields["provenance_id"])
        _text(fields, "issuer")
        _matching(fields, "key_id", _SHA256, "64 lower-case hex digits (an issuer key id)")
        if fields["signature_algorithm"] != SIGNATURE_ALGORITHM:
            raise InputError(f"unsupported signature algorithm {fields['signature_algorithm']!r}")
        _text(fields, "deployment")
        _text(fields, "software_version")
        _matching(fields, "created_at", _RFC3339_UTC, "an RFC 3339 UTC time like 2025-01-31T09:15:02Z")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind.value,
            "version": self.version,
            "provenance_id": self.provenance_id,
            "watermark": self.watermark.to_dict(),
            "issuer": self.issuer,
            "key_id": self.key_id,
            "signature_algorithm": self.signature_algorithm,
            "model": self.model.to_dict(),
            "deployment": self.deployment,
            "software_version": self.software_version,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ProvenanceRecord:
        cls.validate(fields)
        return cls(provenance_id=fields["provenance_id"], watermark=WatermarkPayload.from_dict(fields["watermark"]),
                   issuer=fields["issuer"], key_id=fields["key_id"], model=ModelInfo.from_dict(fields["model"]),
                   deployment=fields["deployment"], created_at=fields["created_at"],
                   software_version=fields["software_version"], signature_algorithm=fields["signature_algorithm"],
                   version=fields["version"])


@dataclass(frozen=True, kw_only=True)
class ImageStatement:
    """What the generator vouches for about one image, bound to its deployment's record."""

    kind: ClassVar[DocumentType] = DocumentType.STATEMENT

    sop_instance_uid: str
    pixel_sha256: str
    report_sha256: str
    weights_sha256: str
    provenance_id: str
    record_sha256: str
    key_id: str
    created_at: str
    seed: int | None = None
    pixel_hash_method: str = PIXEL_HASH_METHOD
    version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        self.validate(self.to_dict())

    @staticmethod
    def validate(fields: Mapping[str, Any]) -> None:
        _header(fields, DocumentType.STATEMENT)
        _exact_keys(fields, {"type", "version", "sop_instance_uid", "pixel_sha256", "pixel_hash_method",
                             "report_sha256", "weights_sha256", "provenance_id", "record_sha256", "key_id",
                             "created_at", "seed"}, "image statement")
        uid = fields["sop_instance_uid"]
        if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
            raise InputError(f"field 'sop_instance_uid' must be a DICOM UID; got {uid!r}")
        for name in ("pixel_sha256", "report_sha256", "weights_sha256", "record_sha256", "key_id"):
            _matching(fields, name, _SHA256, "64 lower-case hex digits")
        if fields["pixel_hash_method"] != PIXEL_HASH_METHOD:
            raise InputError(f"unsupported pixel hash method {fields['pixel_hash_method']!r}")
        check_provenance_id(fields["provenance_id"])
        _matching(fields, "created_at", _RFC3339_UTC, "an RFC 3339 UTC time like 2025-01-31T09:15:02Z")
        seed = fields["seed"]
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise InputError("field 'seed' must be a non-negative integer or null")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind.value,
            "version": self.version,
            "sop_instance_uid": self.sop_instance_uid,
            "pixel_sha256": self.pixel_sha256,
            "pixel_hash_method": self.pixel_hash_method,
            "report_sha256": self.report_sha256,
            "weights_sha256": self.weights_sha256,
            "provenance_id": self.provenance_id,
            "record_sha256": self.record_sha256,
            "key_id": self.key_id,
            "created_at": self.created_at,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ImageStatement:
        cls.validate(fields)
        return cls(**{name: fields[name] for name in fields if name != "type"})


@dataclass(frozen=True, kw_only=True)
class Revocation:
    """An issuer's signed withdrawal of a provenance ID."""

    kind: ClassVar[DocumentType] = DocumentType.REVOCATION

    provenance_id: str
    record_sha256: str
    key_id: str
    revoked_at: str
    reason: str
    version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        self.validate(self.to_dict())

    @staticmethod
    def validate(fields: Mapping[str, Any]) -> None:
        _header(fields, DocumentType.REVOCATION)
        _exact_keys(fields, {"type", "version", "provenance_id", "record_sha256", "key_id", "revoked_at",
                             "reason"}, "revocation")
        check_provenance_id(fields["provenance_id"])
        _matching(fields, "record_sha256", _SHA256, "64 lower-case hex digits")
        _matching(fields, "key_id", _SHA256, "64 lower-case hex digits")
        _matching(fields, "revoked_at", _RFC3339_UTC, "an RFC 3339 UTC time like 2025-01-31T09:15:02Z")
        _text(fields, "reason", max_chars=1024)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind.value, "version": self.version, "provenance_id": self.provenance_id,
                "record_sha256": self.record_sha256, "key_id": self.key_id, "revoked_at": self.revoked_at,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Revocation:
        cls.validate(fields)
        return cls(**{name: fields[name] for name in fields if name != "type"})


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """An issuer's signed statement of the registry log's state: its size and the hash of its last entry.

    Like a Certificate Transparency signed tree head, but over a hash chain: ``head_hash`` is the entry hash of
    entry ``log_size - 1`` (64 zeros for an empty log). Whoever keeps a copy can later prove that the registry
    rewrote, dropped or rolled back anything the checkpoint covered.
    """

    kind: ClassVar[DocumentType] = DocumentType.CHECKPOINT

    log_size: int
    head_hash: str
    key_id: str
    created_at: str
    version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        self.validate(self.to_dict())

    @staticmethod
    def validate(fields: Mapping[str, Any]) -> None:
        _header(fields, DocumentType.CHECKPOINT)
        _exact_keys(fields, {"type", "version", "log_size", "head_hash", "key_id", "created_at"}, "checkpoint")
        size = fields["log_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError("field 'log_size' must be a non-negative integer")
        _matching(fields, "head_hash", _SHA256, "64 lower-case hex digits")
        _matching(fields, "key_id", _SHA256, "64 lower-case hex digits")
        _matching(fields, "created_at", _RFC3339_UTC, "an RFC 3339 UTC time like 2025-01-31T09:15:02Z")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind.value, "version": self.version, "log_size": self.log_size,
                "head_hash": self.head_hash, "key_id": self.key_id, "created_at": self.created_at}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Checkpoint:
        cls.validate(fields)
        return cls(**{name: fields[name] for name in fields if name != "type"})


Document = ProvenanceRecord | ImageStatement | Revocation | Checkpoint
D = TypeVar("D", ProvenanceRecord, ImageStatement, Revocation, Checkpoint)


@dataclass(frozen=True)
class SignedDocument:
    """The exact canonical bytes of a document and the Ed25519 signature over them."""

    payload: bytes
    signature: bytes

    @property
    def sha256(self) -> str:
        """Digest of the payload; statements and revocations name their record by it."""
        return sha256_hex(self.payload)

    @property
    def text(self) -> str:
        """The payload as text (it is ASCII by construction)."""
        return self.payload.decode("ascii", "replace")


def sign(document: Document, signer: Signer) -> SignedDocument:
    """Sign ``document`` with ``signer``, whose key id must be the one the document names."""
    if signer.key_id != document.key_id:
        raise RegistryError(f"the document names key {document.key_id[:16]}... but the signer holds key "
                            f"{signer.key_id[:16]}...; sign with the key the document names")
    payload = canonical_json(document.to_dict())
    return SignedDocument(payload=payload, signature=signer.sign(payload))


def verify(signed: SignedDocument, public_keys: Mapping[str, Ed25519PublicKey], kind: type[D]) -> D:
    """Check ``signed`` against the trusted ``public_keys`` (key id -> key) and return the typed document.

    Order matters: the bytes are parsed only to learn the signer's key id, the signature is checked over the
    stored bytes, and only then are the fields validated. Raises :class:`SignatureError`.
    """
    what = kind.kind.label
    if len(signed.signature) != SIGNATURE_BYTES:
        raise SignatureError(f"the {what} signature has {len(signed.signature)} bytes, not {SIGNATURE_BYTES}",
                             failure=SignatureFailure.MALFORMED)
    try:
        fields = parse_canonical(signed.payload, what)
    except InputError as error:
        raise SignatureError(str(error), failure=SignatureFailure.MALFORMED) from None
    key_id = fields.get("key_id")
    public_key = public_keys.get(key_id) if isinstance(key_id, str) else None
    if public_key is None:
        raise SignatureError(f"the {what} is signed by key {str(key_id)[:16]}..., which is not a trusted issuer "
                             "key of this registry", failure=SignatureFailure.UNKNOWN_KEY)
    if not signature_is_valid(public_key, signed.signature, signed.payload):
        raise SignatureError(f"the {what} signature does not match its content: it was altered or forged",
                             failure=SignatureFailure.BAD_SIGNATURE)
    try:
        return kind.from_dict(fields)
    except InputError as error:
        raise SignatureError(f"the signed {what} is not valid: {error}", failure=SignatureFailure.MALFORMED) from None
