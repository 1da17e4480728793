from __future__ import annotations

import dataclasses

import pytest

from helpers.provenance import MODEL

from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.provenance.canonical import canonical_json
from medsign_forensics.provenance.keys import IssuerKey
from medsign_forensics.provenance.records import (
    ImageStatement,
    ProvenanceRecord,
    Revocation,
    SignatureError,
    SignatureFailure,
    SignedDocument,
    WatermarkPayload,
    new_provenance_id,
    sign,
    utc_now,
    verify,
)


def _record(issuer: IssuerKey) -> ProvenanceRecord:
    return ProvenanceRecord(provenance_id=new_provenance_id(), watermark=WatermarkPayload(key_hex="0f" * 6, bits=48),
                            issuer=issuer.name, key_id=issuer.key_id, model=MODEL, deployment="site-a",
                            created_at=utc_now())


def _statement(issuer: IssuerKey, record: SignedDocument) -> ImageStatement:
    return ImageStatement(sop_instance_uid="2.25.1234", pixel_sha256="1" * 64, report_sha256="2" * 64,
                          weights_sha256=MODEL.weights_sha256, provenance_id=new_provenance_id(),
                          record_sha256=record.sha256, key_id=issuer.key_id, created_at=utc_now(), seed=3)


def test_record_has_the_documented_fields_and_verifies(issuer: IssuerKey) -> None:
    record = _record(issuer)
    signed = sign(record, issuer)
    assert set(record.to_dict()) == {"type", "version", "provenance_id", "watermark", "issuer", "key_id",
                                     "signature_algorithm", "model", "deployment", "software_version", "created_at"}
    assert signed.payload == canonical_json(record.to_dict())
    assert verify(signed, {issuer.key_id: issuer.public_key}, ProvenanceRecord) == record


def test_flipped_signature_byte_is_a_bad_signature(issuer: IssuerKey) -> None:
    signed = sign(_record(issuer), issuer)
    flipped = bytes([signed.signature[0] ^ 0x01]) + signed.signature[1:]
    with pytest.raises(SignatureError) as caught:
        verify(SignedDocument(signed.payload, flipped), {issuer.key_id: issuer.public_key}, ProvenanceRecord)
    assert caught.value.failure is SignatureFailure.BAD_SIGNATURE


def test_altered_payload_is_a_bad_signature(issuer: IssuerKey) -> None:
    signed = sign(_record(issuer), issuer)
    altered = signed.payload.replace(b"site-a", b"site-b")
    with pytest.raises(SignatureError, match="altered or forged") as caught:
        verify(SignedDocument(altered, signed.signature), {issuer.key_id: issuer.public_key}, ProvenanceRecord)
    assert caught.value.failure is SignatureFailure.BAD_SIGNATURE


def test_unknown_key_and_malformed_documents(issuer: IssuerKey) -> None:
    signed = sign(_record(issuer), issuer)
    other = IssuerKey.generate("Other")
    with pytest.raises(SignatureError) as caught:
        verify(signed, {other.key_id: other.public_key}, ProvenanceRecord)
    assert caught.value.failure is SignatureFailure.UNKNOWN_KEY
    with pytest.raises(SignatureError) as caught:
        verify(SignedDocument(signed.payload + b" ", signed.signature), {issuer.key_id: issuer.public_key},
               ProvenanceRecord)
    assert caught.value.failure is SignatureFailure.MALFORMED
    with pytest.raises(SignatureError) as caught:
        verify(SignedDocument(signed.payload, signed.signature[:10]), {issuer.key_id: issuer.public_key},
               ProvenanceRecord)
    assert caught.value.failure is SignatureFailure.MALFORMED


def test_a_statement_signature_cannot_pass_as_a_record(issuer: IssuerKey) -> None:
    record = sign(_record(issuer), issuer)
    statement = sign(_statement(issuer, record), issuer)
    keys = {issuer.key_id: issuer.public_key}
    assert verify(statement, keys, ImageStatement).seed == 3
    with pytest.raises(SignatureError, match="expected a 'medsign.provenance-record'") as caught:
        verify(statement, keys, ProvenanceRecord)
    assert caught.value.failure is SignatureFailure.MALFORMED


def test_signer_must_hold_the_named_key(issuer: IssuerKey) -> None:
    with pytest.raises(RegistryError, match="sign with the key the document names"):
        sign(_record(issuer), IssuerKey.generate("Someone else"))


def test_revocation_round_trip(issuer: IssuerKey) -> None:
    record = sign(_record(issuer), issuer)
    revocation = Revocation(provenance_id=new_provenance_id(), record_sha256=record.sha256, key_id=issuer.key_id,
                            revoked_at=utc_now(), reason="weights leaked")
    signed = sign(revocation, issuer)
    assert verify(signed, {issuer.key_id: issuer.public_key}, Revocation).reason == "weights leaked"


@pytest.mark.parametrize("change", [
    {"provenance_id": "msp-UPPERCASE00000000"},
    {"created_at": "2025-01-01 10:00:00"},
    {"key_id": "xyz"},
    {"deployment": ""},
    {"deployment": "site\\a"},
    {"issuer": "two\nlines"},
])
def test_invalid_record_fields_are_refused(issuer: IssuerKey, change: dict[str, str]) -> None:
    with pytest.raises(InputError):
        dataclasses.replace(_record(issuer), **change)


def test_watermark_payload_must_match_its_length() -> None:
    with pytest.raises(InputError, match="12 lower-case hex digits"):
        WatermarkPayload(key_hex="abc", bits=48)
    with pytest.raises(InputError, match="not supported"):
        WatermarkPayload(key_hex="ab", bits=8)


def test_provenance_ids_are_fresh_and_well_formed() -> None:
    ids = {new_provenance_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 20 and i.startswith("msp-") for i in ids)
