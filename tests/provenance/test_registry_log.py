"""The append-only log: chain, checkpoints, migration of schema-1 files, and the registry attack suite."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from helpers.provenance import MODEL

from medsign_forensics.config import REPO_DIR
from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.provenance.attacks import SCENARIOS, Scenario, run_scenario
from medsign_forensics.provenance.entries import KeyStatus
from medsign_forensics.provenance.keys import IssuerKey
from medsign_forensics.provenance.log import GENESIS_HASH, chain_heads, entry_hash, parse_pin
from medsign_forensics.provenance.policy import Policy
from medsign_forensics.provenance.registry import Registry
from medsign_forensics.provenance.schema import REGISTRY_FILE


def _issue(registry: Registry, issuer: IssuerKey, policy: Policy, n: int = 1):
    return [registry.issue(issuer, model=MODEL, deployment=f"site-{i}", policy=policy) for i in range(n)]


def test_every_write_appends_a_chained_entry_and_a_checkpoint(registry: Registry, issuer: IssuerKey,
                                                              policy: Policy) -> None:
    first, second = _issue(registry, issuer, policy, n=2)
    registry.revoke(first.provenance_id, issuer, reason="leak")
    entries = registry.log_entries()
    assert [(e.index, e.kind, e.provenance_id) for e in entries] == [
        (0, "issue", first.provenance_id), (1, "issue", second.provenance_id), (2, "revoke", first.provenance_id)]
    assert entries[0].prev_hash == GENESIS_HASH
    assert entries[1].entry_hash == entry_hash(1, entries[0].entry_hash, entries[1].document, entries[1].signature)
    assert registry.head() == (3, chain_heads(entries)[-1])
    assert [c.log_size for c in registry.checkpoints()] == [1, 2, 3]
    report = registry.check()
    assert report.ok and report.anchored and report.reason is None
    assert report.log is not None and report.log.checkpoint_size == 3


def test_log_tables_refuse_update_and_delete(registry: Registry, issuer: IssuerKey, policy: Policy) -> None:
    _issue(registry, issuer, policy)
    with sqlite3.connect(registry.folder / REGISTRY_FILE) as db:
        for statement in ("UPDATE log SET kind = 'revoke'", "DELETE FROM log", "DELETE FROM checkpoints"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)


def test_pins_parse() -> None:
    assert parse_pin("AB" * 32).log_size is None and parse_pin(f"3:{'ab' * 32}").log_size == 3
    for bad in ("xyz", "3:short", "x:" + "ab" * 32):
        with pytest.raises(InputError):
            parse_pin(bad)


def _v1_registry(folder: Path, issuer: IssuerKey, policy: Policy) -> list:
    """A schema-1 file as the previous release wrote it: rows only."""
    with Registry.open(folder, create=True) as registry:
        entries = _issue(registry, issuer, policy, n=3)
        registry.revoke(entries[1].provenance_id, issuer, reason="leak")
    with sqlite3.connect(folder / REGISTRY_FILE) as db:
        for name in ("log_append_only_update", "log_append_only_delete", "checkpoints_append_only_update",
                     "checkpoints_append_only_delete"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE log")
        db.execute("DROP TABLE checkpoints")
        db.execute("PRAGMA user_version = 1")
    return entries


def test_schema_1_registry_opens_without_being_written_and_check_says_so(tmp_path: Path, issuer: IssuerKey,
                                                                         policy: Policy) -> None:
    folder = tmp_path / "v1"
    entries = _v1_registry(folder, issuer, policy)
    before = (folder / REGISTRY_FILE).read_bytes()
    with Registry.open(folder) as registry:
        assert registry.schema_version == 1 and registry.log_entries() == []
        assert len(registry.lookup(48)) == 3  # verify's path works unchanged
        registry.verify_entry(registry.get(entries[0].provenance_id))
        report = registry.check()
        assert not report.ok and not report.tampered and report.reason.startswith("schema version 1")
        assert registry.check(require_anchor=False).ok
    assert (folder / REGISTRY_FILE).read_bytes() == before


def test_migrate_with_and_without_the_issuer_key(tmp_path: Path, issuer: IssuerKey, policy: Policy) -> None:
    folder = tmp_path / "v1"
    entries = _v1_registry(folder, issuer, policy)
    with Registry.open(folder) as registry:
        result = registry.migrate()
        assert result.from_version == 1 and result.log_size == 4 and result.checkpoint is None
        assert registry.schema_version == 2
        assert [e.kind for e in registry.log_entries()].count("revoke") == 1
        report = registry.check()
        assert not report.ok and not report.tampered and report.reason.startswith("no signed checkpoint")
        assert registry.check(pin=parse_pin(f"4:{result.head_hash}")).ok
        with pytest.raises(RegistryError, match="not an issuer key of this registry"):
            registry.migrate(IssuerKey.generate("Stranger"))
        signed = registry.migrate(issuer)
        assert signed.checkpoint is not None and signed.head_hash == result.head_hash
        assert registry.check().ok and registry.check().anchored
        assert registry.migrate(issuer).checkpoint is None  # idempotent
        assert registry.get(entries[1].provenance_id).status is KeyStatus.REVOKED


def test_first_write_to_a_schema_1_registry_builds_the_log(tmp_path: Path, issuer: IssuerKey,
                                                           policy: Policy) -> None:
    folder = tmp_path / "v1"
    _v1_registry(folder, issuer, policy)
    with Registry.open(folder) as registry:
        other = IssuerKey.generate("Local signer")  # e.g. the demo's local signer issuing into a copy
        registry.issue(other, model=MODEL, deployment="new", policy=policy)
        assert registry.schema_version == 2 and len(registry.log_entries()) == 5
        assert registry.check().ok


def test_migration_refuses_a_tampered_row(tmp_path: Path, issuer: IssuerKey, policy: Policy) -> None:
    folder = tmp_path / "v1"
    _v1_registry(folder, issuer, policy)
    with sqlite3.connect(folder / REGISTRY_FILE) as db:
        db.execute("UPDATE keys SET record = replace(record, 'site-0', 'site-x')")
    with Registry.open(folder) as registry:
        with pytest.raises(RegistryError, match="cannot build the log: row .* fails its check"):
            registry.migrate()
        assert registry.schema_version == 1  # the failed transaction left nothing behind


def test_demo_registry_copy_migrates_to_the_published_head(tmp_path: Path) -> None:
    shutil.copytree(REPO_DIR / "keys" / "demo-registry", tmp_path / "demo")
    with Registry.open(tmp_path / "demo") as registry:
        before = registry.head()
        assert registry.migrate().log_size == 6  # already migrated: nothing to do (5 migrated entries + 0.2.0's key)
        assert registry.head() == before


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_registry_attack_suite(scenario: Scenario, tmp_path: Path) -> None:
    report = run_scenario(scenario, tmp_path)
    if not scenario.expect:
        assert report.ok and report.anchored, report.to_dict()
        return
    assert not report.ok  # tampered, or (checkpoints all deleted) unanchored: both exit 1
    assert report.reason is not None and "\n" not in report.reason
    assert scenario.expect in report.reason, report.reason
