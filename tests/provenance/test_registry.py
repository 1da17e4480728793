from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from helpers.provenance import MODEL

from medsign_forensics.errors import RegistryError
from medsign_forensics.key import hex_to_bits, match_counts
from medsign_forensics.provenance.canonical import from_base64, to_base64
from medsign_forensics.provenance.entries import KeyStatus
from medsign_forensics.provenance.keys import IssuerKey
from medsign_forensics.provenance.policy import Policy, load_policy
from medsign_forensics.provenance.records import SignatureError, SignatureFailure
from medsign_forensics.provenance.registry import Registry
from medsign_forensics.provenance.schema import REGISTRY_FILE, SCHEMA_VERSION


def _sql(registry: Registry, statement: str, *params: object) -> None:
    """Edit the database behind the library's back, as an attacker with file access would."""
    with sqlite3.connect(registry.folder / REGISTRY_FILE) as db:
        db.execute(statement, params)


def _issue(registry: Registry, issuer: IssuerKey, policy: Policy, n: int = 1, **kwargs: object):
    return [registry.issue(issuer, model=MODEL, deployment=f"site-{i}", policy=policy, **kwargs) for i in range(n)]


def test_missing_registry_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no registry here.*keys init --registry") as caught:
        Registry.open(tmp_path / "nowhere")
    assert caught.value.exit_code == 5
    assert not (tmp_path / "nowhere").exists()


def test_new_registry_has_current_schema_and_wal(registry: Registry) -> None:
    assert registry.schema_version == SCHEMA_VERSION
    mode = sqlite3.connect(registry.folder / REGISTRY_FILE).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_newer_schema_and_garbage_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "reg"
    Registry.create(folder).close()
    with sqlite3.connect(folder / REGISTRY_FILE) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryError, match="newer than this software"):
        Registry.open(folder)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / REGISTRY_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="not a usable SQLite registry"):
        Registry.open(garbage)


def test_issue_stores_a_verifiable_record_and_registers_the_issuer(registry: Registry, issuer: IssuerKey,
                                                                  policy: Policy) -> None:
    (entry,) = _issue(registry, issuer, policy)
    assert [i.key_id for i in registry.issuers()] == [issuer.key_id]
    verified = registry.verify_entry(registry.get(entry.provenance_id))
    assert verified.record.watermark.key_hex == entry.key_hex
    assert verified.record.model == MODEL and verified.record.deployment == "site-0"
    assert verified.status is KeyStatus.ACTIVE and verified.revocation is None
    assert registry.get(entry.key_hex).provenance_id == entry.provenance_id
    assert registry.check().ok


def test_keys_respect_the_policy_distance(registry: Registry, issuer: IssuerKey, tmp_path: Path) -> None:
    text = Path(load_policy().source).read_text().replace("min_hamming_distance = 8", "min_hamming_distance = 12")
    (tmp_path / "wide.toml").write_text(text)
    wide = load_policy(tmp_path / "wide.toml")
    entries = _issue(registry, issuer, wide, n=40)
    keys = np.stack([hex_to_bits(e.key_hex) for e in entries])
    distances = (keys[:, None, :] != keys[None, :, :]).sum(axis=2)
    np.fill_diagonal(distances, 99)
    assert distances.min() >= 12
    assert len({e.provenance_id for e in entries}) == 40


class _SameBits:
    """A stand-in generator that always draws the all-zero key."""

    def integers(self, low: int, high: int, size: int, dtype: object) -> np.ndarray:
        return np.zeros(size, dtype=np.uint8)


def test_crowded_key_space_is_reported(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    _issue(registry, issuer, policy, rng=_SameBits())
    with pytest.raises(RegistryError, match="key space is crowded"):
        _issue(registry, issuer, policy, rng=_SameBits())
    assert len(registry.entries()) == 1  # the failed transaction left nothing behind


def test_lookup_returns_active_and_revoked_with_vectorised_matches(registry: Registry, issuer: IssuerKey,
                                                                   policy: Policy) -> None:
    entries = _issue(registry, issuer, policy, n=5)
    registry.revoke(entries[2].provenance_id, issuer, reason="test")
    candidates = registry.lookup(48)
    assert len(candidates) == 5 and len(registry.lookup(64)) == 0
    assert {e.status for e in candidates.entries} == {KeyStatus.ACTIVE, KeyStatus.REVOKED}
    extracted = hex_to_bits(entries[2].key_hex)
    extracted[:3] ^= 1
    counts = candidates.match_counts(extracted)
    assert counts.tolist() == [int(match_counts(extracted, hex_to_bits(e.key_hex))) for e in candidates.entries]
    assert candidates.entries[int(counts.argmax())].provenance_id == entries[2].provenance_id
    assert counts.max() == 45


def test_revocation_is_signed_and_final(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    (entry,) = _issue(registry, issuer, policy)
    with pytest.raises(RegistryError, match="only that issuer key can revoke"):
        registry.revoke(entry.provenance_id, IssuerKey.generate("Other"), reason="no")
    revoked = registry.revoke(entry.provenance_id, issuer, reason="weights leaked")
    assert revoked.status is KeyStatus.REVOKED
    verified = registry.verify_entry(revoked)
    assert verified.revocation is not None and verified.revocation.reason == "weights leaked"
    assert registry.check().ok
    with pytest.raises(RegistryError, match="already revoked"):
        registry.revoke(entry.provenance_id, issuer, reason="again")
    with pytest.raises(RegistryError, match="no deployment with provenance ID"):
        registry.revoke("msp-aaaaaaaaaaaaaaaa", issuer, reason="unknown")


def test_check_reports_an_edited_record(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    good, bad = _issue(registry, issuer, policy, n=2)
    _sql(registry, "UPDATE keys SET record = replace(record, 'site-1', 'site-x') WHERE provenance_id = ?",
         bad.provenance_id)
    report = registry.check()
    assert not report.ok
    assert [row.provenance_id for row in report.failed_rows] == [bad.provenance_id]
    assert "altered or forged" in report.failed_rows[0].problems[0]
    with pytest.raises(SignatureError) as caught:
        registry.verify_entry(registry.get(bad.provenance_id))
    assert caught.value.failure is SignatureFailure.BAD_SIGNATURE
    registry.verify_entry(registry.get(good.provenance_id))


def test_check_reports_a_flipped_signature_byte(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    (entry,) = _issue(registry, issuer, policy)
    signature = bytearray(from_base64(entry.to_dict()["signature"]))
    signature[10] ^= 0x80
    _sql(registry, "UPDATE keys SET signature = ?", to_base64(bytes(signature)))
    assert registry.check().failed_rows[0].problems[0].startswith("record: the provenance record signature")


def test_check_reports_a_redirected_key_column(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    (entry,) = _issue(registry, issuer, policy)
    _sql(registry, "UPDATE keys SET key_hex = 'ffffffffffff'")
    (problem,) = registry.check().failed_rows[0].problems
    assert "column key_hex is 'ffffffffffff' but the signed record says" in problem


def test_check_reports_unrevoking_and_unsigned_revocation(registry: Registry, issuer: IssuerKey,
                                                          policy: Policy) -> None:
    first, second = _issue(registry, issuer, policy, n=2)
    registry.revoke(first.provenance_id, issuer, reason="leak")
    _sql(registry, "UPDATE keys SET status = 'active' WHERE provenance_id = ?", first.provenance_id)
    _sql(registry, "UPDATE keys SET status = 'revoked' WHERE provenance_id = ?", second.provenance_id)
    problems = {row.provenance_id: row.problems for row in registry.check().failed_rows}
    assert "un-revoked" in problems[first.provenance_id][0]
    assert "no signed revocation" in problems[second.provenance_id][0]


def test_check_reports_a_substituted_issuer_key(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    _issue(registry, issuer, policy)
    _sql(registry, "UPDATE issuers SET public_key_pem = ?", IssuerKey.generate("Mallory").public_key_pem())
    report = registry.check()
    assert "key id is not the SHA-256 of its public key" in report.issuer_problems[0]
    assert "not a valid trusted issuer" in report.failed_rows[0].problems[0]


def test_check_with_pinned_keys_rejects_other_issuers(registry: Registry, issuer: IssuerKey,
                                                      policy: Policy) -> None:
    _issue(registry, issuer, policy)
    assert registry.check({issuer.key_id: issuer.public_key}).ok
    stranger = IssuerKey.generate("Stranger")
    report = registry.check({stranger.key_id: stranger.public_key})
    assert not report.ok and "not among the trusted public keys" in report.issuer_problems[0]
