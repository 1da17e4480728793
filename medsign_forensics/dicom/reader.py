"""Read a study's MedSign provenance back and check every claim it makes, with public keys only.

:func:`read_provenance_block` returns what the private block holds (or None when there is none).
:func:`check_study` runs every check and returns a :class:`StudyCheck`; it raises only when the file itself
cannot be read as DICOM (:class:`~medsign_forensics.errors.DicomError`). Each :class:`Check` names the
policy :class:`~medsign_forensics.provenance.policy.TamperEvent` its failure stands for, so a verifier can
apply the policy without knowing the checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pydicom
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medsign_forensics.dicom.pixels import pixel_sha256, report_sha256
from medsign_forensics.dicom.private import PRIVATE_CREATOR, Element, find_block
from medsign_forensics.errors import DicomError, InputError
from medsign_forensics.provenance.policy import TamperEvent
from medsign_forensics.provenance.records import (
    ImageStatement,
    ProvenanceRecord,
    SignatureError,
    SignatureFailure,
    SignedDocument,
    verify,
)


class CheckStatus(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"  # not applicable: no provenance block, or an earlier check it depends on failed
    UNVERIFIABLE = "unverifiable"  # signed by an issuer key the verifier does not know: neither valid nor forged


class CheckName(str, Enum):
    """Stable names of the checks, as they appear in JSON output."""

    PROVENANCE_BLOCK = "provenance_block"
    RECORD_SIGNATURE = "record_signature"
    TAGS_MATCH_RECORD = "tags_match_record"
    STATEMENT_SIGNATURE = "statement_signature"
    STATEMENT_MATCHES_RECORD = "statement_matches_record"
    SOP_INSTANCE_UID = "sop_instance_uid"
    PIXEL_HASH = "pixel_hash"
    REPORT_HASH = "report_hash"
    SYNTHETIC_LABELS = "synthetic_labels"


# The policy event each failed check stands for (None: informational, no policy rule).
EVENTS: dict[CheckName, TamperEvent | None] = {
    CheckName.PROVENANCE_BLOCK: TamperEvent.SIGNATURE_INVALID,
    CheckName.RECORD_SIGNATURE: TamperEvent.SIGNATURE_INVALID,
    CheckName.TAGS_MATCH_RECORD: TamperEvent.STATEMENT_MISMATCH,
    CheckName.STATEMENT_SIGNATURE: TamperEvent.SIGNATURE_INVALID,
    CheckName.STATEMENT_MATCHES_RECORD: TamperEvent.STATEMENT_MISMATCH,
    CheckName.SOP_INSTANCE_UID: TamperEvent.STATEMENT_MISMATCH,
    CheckName.PIXEL_HASH: TamperEvent.PIXEL_HASH_MISMATCH,
    CheckName.REPORT_HASH: TamperEvent.REPORT_HASH_MISMATCH,
    CheckName.SYNTHETIC_LABELS: None,
}


@dataclass(frozen=True)
class Check:
    name: CheckName
    status: CheckStatus
    detail: str

    @property
    def event(self) -> TamperEvent | None:
        """The policy event a failure of this check stands for."""
        return EVENTS[self.name]

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name.value, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class ProvenanceBlock:
    """The MedSign private block as stored (nothing verified yet)."""

    group: int
    provenance_id: str
    key_id: str
    record: SignedDocument
    statement: SignedDocument
    report_text: str | None


@dataclass(frozen=True)
class StudyCheck:
    """Everything :func:`check_study` established about one DICOM object."""

    path: Path | None
    sop_instance_uid: str | None
    block: ProvenanceBlock | None
    record: ProvenanceRecord | None  # set only when its signature verified
    statement: ImageStatement | None  # set only when its signature verified
    pixel_sha256: str | None  # recomputed from the pixel values; None without a provenance block or undecodable
    checks: tuple[Check, ...]

    @property
    def has_provenance(self) -> bool:
        return self.block is not None

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.status is CheckStatus.FAIL)

    @property
    def unverifiable(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.status is CheckStatus.UNVERIFIABLE)

    @property
    def ok(self) -> bool:
        """True when provenance is present, every signature verified and no check failed."""
        return self.block is not None and not self.failed and not self.unverifiable

    def check(self, name: CheckName) -> Check:
        return next(check for check in self.checks if check.name is name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": None if self.path is None else str(self.path),
            "sop_instance_uid": self.sop_instance_uid,
            "provenance_id": None if self.block is None else self.block.provenance_id,
            "key_id": None if self.block is None else self.block.key_id,
            "pixel_sha256": self.pixel_sha256,
            "checks": [check.to_dict() for check in self.checks],
        }


def read_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file or raise DicomError naming the file.

    Files without the Part 10 preamble are accepted only when they parse to a dataset with a SOP Class UID
    or pixel data: forced parsing turns almost any bytes into some "dataset", which is not evidence of DICOM.
    """
    path = Path(path)
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise DicomError("file not found", path=path) from None
    except InvalidDicomError:
        pass
    except Exception as error:  # pydicom raises many types on damaged input
        raise DicomError(f"not a readable DICOM file: {error}", path=path) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, force=True)
            recognisable = "SOPClassUID" in dataset or "PixelData" in dataset
    except Exception:
        recognisable = False
    if not recognisable:
        raise DicomError("not a DICOM file (no DICM preamble and no SOP Class UID or pixel data)", path=path)
    return dataset


def read_provenance_block(dataset: Dataset) -> ProvenanceBlock | None:
    """The provenance block of ``dataset``; None when absent; DicomError when present but incomplete."""
    block = find_block(dataset)
    if block is None:
        return None

    def value(element: Element, *, required: bool = True) -> Any:
        if element not in block:
            if required:
                raise DicomError(f"the {PRIVATE_CREATOR!r} block lacks its {element.name.lower()} element "
                                 f"(offset 0x{element.value:02x})")
            return None
        return block[element].value

    try:
        return ProvenanceBlock(
            group=block.group,
            provenance_id=_text(value(Element.PROVENANCE_ID)),
            key_id=_text(value(Element.KEY_ID)),
            record=SignedDocument(payload=_payload(value(Element.RECORD)),
                                  signature=_binary(value(Element.RECORD_SIGNATURE))),
            statement=SignedDocument(payload=_payload(value(Element.STATEMENT)),
                                     signature=_binary(value(Element.STATEMENT_SIGNATURE))),
            report_text=_optional_text(value(Element.REPORT_TEXT, required=False)),
        )
    except (TypeError, ValueError, UnicodeError) as error:
        raise DicomError(f"the {PRIVATE_CREATOR!r} block holds a value of the wrong kind: {error}") from None


def check_study(source: str | Path | Dataset, public_keys: Mapping[str, Ed25519PublicKey]) -> StudyCheck:
    """Check a study's provenance against trusted issuer ``public_keys`` (key id -> key).

    ``source`` is a file path or an already read dataset (e.g. one retrieved from a PACS).
    """
    path = None if isinstance(source, Dataset) else Path(source)
    dataset = source if isinstance(source, Dataset) else read_dataset(source)
    sop_instance_uid = _optional_text(dataset.get("SOPInstanceUID"))
    checks: list[Check] = [_synthetic_labels(dataset)]
    try:
        block = read_provenance_block(dataset)
    except DicomError as error:
        checks.insert(0, Check(CheckName.PROVENANCE_BLOCK, CheckStatus.FAIL, str(error)))
        return _finish(path, sop_instance_uid, None, None, None, None, checks)
    if block is None:  # nothing signed to compare with: the pixels are not decoded a second time
        checks.insert(0, Check(CheckName.PROVENANCE_BLOCK, CheckStatus.SKIPPED,
                               f"no {PRIVATE_CREATOR!r} private block: the file claims no MedSign provenance"))
        return _finish(path, sop_instance_uid, None, None, None, None, checks)
    digest, digest_problem = _pixel_digest(dataset)
    checks.insert(0, Check(CheckName.PROVENANCE_BLOCK, CheckStatus.PASS, f"found in group 0x{block.group:04x}"))

    record, record_check = _verified(block.record, public_keys, ProvenanceRecord, CheckName.RECORD_SIGNATURE)
    statement, statement_check = _verified(block.statement, public_keys, ImageStatement,
                                           CheckName.STATEMENT_SIGNATURE)
    checks += [record_check, statement_check]

    if record is None:
        checks.append(_skipped(CheckName.TAGS_MATCH_RECORD, "the record did not verify"))
    elif (block.provenance_id, block.key_id) != (record.provenance_id, record.key_id):
        checks.append(Check(CheckName.TAGS_MATCH_RECORD, CheckStatus.FAIL,
                            f"tags name {block.provenance_id} / key {block.key_id[:16]}... but the signed record "
                            f"is {record.provenance_id} / key {record.key_id[:16]}..."))
    else:
        checks.append(Check(CheckName.TAGS_MATCH_RECORD, CheckStatus.PASS, record.provenance_id))

    if statement is None:
        why = ("the image statement's issuer is unknown here" if statement_check.status is CheckStatus.UNVERIFIABLE
               else "the image statement did not verify")
        for name in (CheckName.STATEMENT_MATCHES_RECORD, CheckName.SOP_INSTANCE_UID, CheckName.PIXEL_HASH,
                     CheckName.REPORT_HASH):
            checks.append(_skipped(name, why))
        return _finish(path, sop_instance_uid, block, record, None, digest, checks)

    checks.append(_statement_vs_record(statement, record, block))
    checks.append(_compare(CheckName.SOP_INSTANCE_UID, statement.sop_instance_uid, sop_instance_uid,
                           "the statement describes SOP Instance UID", "this object is"))
    if digest is None:
        checks.append(Check(CheckName.PIXEL_HASH, CheckStatus.FAIL, digest_problem))
    else:
        checks.append(_compare(CheckName.PIXEL_HASH, statement.pixel_sha256, digest,
                               "signed pixel digest", "recomputed"))
    if block.report_text is None:
        checks.append(_skipped(CheckName.REPORT_HASH, "no report text stored"))
    else:
        checks.append(_compare(CheckName.REPORT_HASH, statement.report_sha256, report_sha256(block.report_text),
                               "signed report digest", "stored report text gives"))
    return _finish(path, sop_instance_uid, block, record, statement, digest, checks)


def _finish(path: Path | None, uid: str | None, block: ProvenanceBlock | None, record: ProvenanceRecord | None,
            statement: ImageStatement | None, digest: str | None, checks: list[Check]) -> StudyCheck:
    return StudyCheck(path=path, sop_instance_uid=uid, block=block, record=record, statement=statement,
                      pixel_sha256=digest, checks=tuple(checks))


def _verified(signed: SignedDocument, keys: Mapping[str, Ed25519PublicKey], kind: Any,
              name: CheckName) -> tuple[Any, Check]:
    try:
        document = verify(signed, keys, kind)
    except SignatureError as error:
        if error.failure is SignatureFailure.UNKNOWN_KEY:  # cannot be checked here: not evidence of forgery
            return None, Check(name, CheckStatus.UNVERIFIABLE, f"unverifiable (unknown issuer): {error}")
        return None, Check(name, CheckStatus.FAIL, f"{error.failure.value}: {error}")
    return document, Check(name, CheckStatus.PASS, f"Ed25519, key {document.key_id[:16]}...")


def _statement_vs_record(statement: ImageStatement, record: ProvenanceRecord | None,
                         block: ProvenanceBlock) -> Check:
    name = CheckName.STATEMENT_MATCHES_RECORD
    if statement.record_sha256 != block.record.sha256:
        return Check(name, CheckStatus.FAIL, "the statement was made for another provenance record")
    if record is None:
        return _skipped(name, "the record did not verify")
    if statement.provenance_id != record.provenance_id:
        return Check(name, CheckStatus.FAIL,
                     f"statement names {statement.provenance_id}, record is {record.provenance_id}")
    if statement.weights_sha256 != record.model.weights_sha256:
        return Check(name, CheckStatus.FAIL, "the statement's weights digest differs from the record's model")
    return Check(name, CheckStatus.PASS, "same record, provenance ID and weights")


def _compare(name: CheckName, signed: str, actual: str | None, signed_label: str, actual_label: str) -> Check:
    if signed == actual:
        return Check(name, CheckStatus.PASS, f"{signed_label} {_short(signed)} matches")
    return Check(name, CheckStatus.FAIL, f"{signed_label} {_short(signed)}, {actual_label} {_short(actual)}")


def _skipped(name: CheckName, why: str) -> Check:
    return Check(name, CheckStatus.SKIPPED, why)


def _synthetic_labels(dataset: Dataset) -> Check:
    labels = {"SyntheticData": "YES", "ConversionType": "SYN"}
    wrong = [f"{keyword}={dataset.get(keyword)!r}" for keyword, wanted in labels.items()
             if str(dataset.get(keyword, "")).strip().upper() != wanted]
    if wrong:
        return Check(CheckName.SYNTHETIC_LABELS, CheckStatus.FAIL, "not labelled synthetic: " + ", ".join(wrong))
    return Check(CheckName.SYNTHETIC_LABELS, CheckStatus.PASS, "Synthetic Data YES, Conversion Type SYN")


def _pixel_digest(dataset: Dataset) -> tuple[str | None, str]:
    if "PixelData" not in dataset:
        return None, "the object has no pixel data"
    try:
        if int(dataset.get("NumberOfFrames", 1) or 1) != 1 or int(dataset.get("SamplesPerPixel", 1)) != 1:
            return None, "the pixel data is not a single greyscale frame"
        pixels = dataset.pixel_array
    except Exception as error:  # decoders raise many types (missing plugin, truncated data, ...)
        return None, f"the pixel data cannot be decoded: {error}"
    try:
        return pixel_sha256(pixels), ""
    except InputError as error:
        return None, str(error)


def _short(value: str | None) -> str:
    return "none" if value is None else (value[:16] + "..." if len(value) > 19 else value)


def _raw(value: Any) -> Any:
    # Elements read back as UN (implicit-VR round trip) or as multi-valued text need unwrapping.
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(part) for part in value)
    return value


def _text(value: Any) -> str:
    value = _raw(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {type(value).__name__}")
    return value.strip(" \x00")


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _payload(value: Any) -> bytes:
    # Canonical JSON is ASCII and ends with "}", so DICOM's trailing space padding can be stripped safely.
    return _text(value).encode("utf-8")


def _binary(value: Any) -> bytes:
    if isinstance(value, str):
        raise TypeError("a signature element holds text instead of bytes")
    return bytes(value)
