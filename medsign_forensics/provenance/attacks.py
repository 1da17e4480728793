"""Registry tampering scenarios: what an attacker who can write ``registry.sqlite`` (but holds no issuer private
key, except in the key-swap scenario where they bring their own) can do, and what ``keys check`` must say.

One definition serves ``benchmarks/registry_attack_suite.py`` and the tests, so both speak of the same attacks
by the same names. Every scenario starts from :func:`build_victim`: a tiny registry (issue A, issue B, revoke B,
issue C) whose auditor kept the signed checkpoint file after the last write, and an older copy of the database
taken after the first two entries (for the rollback). The attacker works with plain ``sqlite3``, drops the
append-only triggers when needed, and re-chains the log with the public hash function when that helps them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medsign_forensics.provenance.canonical import to_base64
from medsign_forensics.provenance.checks import CheckReport
from medsign_forensics.provenance.keys import IssuerKey
from medsign_forensics.provenance.log import (
    GENESIS_HASH,
    CheckpointPin,
    chain_heads,
    checkpoint_file_bytes,
    entry_hash,
    load_checkpoint_file,
)
from medsign_forensics.provenance.policy import load_policy
from medsign_forensics.provenance.records import (
    Checkpoint,
    ModelInfo,
    ProvenanceRecord,
    sign,
    utc_now,
)
from medsign_forensics.provenance.registry import Registry
from medsign_forensics.provenance.schema import REGISTRY_FILE

MODEL = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32)


@dataclass(frozen=True)
class Victim:
    """A tiny registry and what its auditor kept."""

    folder: Path
    issuer: IssuerKey
    ids: dict[str, str]  # "A", "B" (revoked), "C" -> provenance ID
    pin_file: Path  # signed checkpoint file written after the last entry
    old_copy: Path  # registry.sqlite after the first two entries

    @property
    def trusted(self) -> dict:
        return {self.issuer.key_id: self.issuer.public_key}

    def pin(self) -> CheckpointPin:
        return load_checkpoint_file(self.pin_file)[0]


def build_victim(root: Path, issuer: IssuerKey | None = None) -> Victim:
    """Issue A and B, save an old copy, revoke B, issue C, export the latest checkpoint as the auditor's pin."""
    issuer = issuer or IssuerKey.generate("Attack Suite Issuer")
    folder = root / "registry"
    policy = load_policy("default")
    ids: dict[str, str] = {}
    with Registry.open(folder, create=True) as registry:
        for name in ("A", "B"):
            ids[name] = registry.issue(issuer, model=MODEL, deployment=f"site-{name}", policy=policy).provenance_id
    old_copy = root / "old-registry.sqlite"
    shutil.copyfile(folder / REGISTRY_FILE, old_copy)
    with Registry.open(folder) as registry:
        registry.revoke(ids["B"], issuer, reason="weights leaked")
        ids["C"] = registry.issue(issuer, model=MODEL, deployment="site-C", policy=policy).provenance_id
        signed = registry.latest_checkpoint()
    assert signed is not None
    pin_file = root / "auditor-checkpoint.json"
    pin_file.write_bytes(checkpoint_file_bytes(signed, issuer.public_key_pem()))
    return Victim(folder=folder, issuer=issuer, ids=ids, pin_file=pin_file, old_copy=old_copy)


# -- the attacker's tools -----------------------------------------------------------------------------------

def _connect(victim: Victim) -> sqlite3.Connection:
    db = sqlite3.connect(victim.folder / REGISTRY_FILE, isolation_level=None)
    db.execute("PRAGMA foreign_keys=OFF")
    for table in ("log", "checkpoints"):
        for action in ("update", "delete"):
            db.execute(f"DROP TRIGGER IF EXISTS {table}_append_only_{action}")
    return db


def _log(db: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    return list(db.execute("SELECT kind, provenance_id, document, signature FROM log ORDER BY idx"))


def _rewrite_log(db: sqlite3.Connection, entries: list[tuple[str, str, str, str]]) -> None:
    """Replace the log with ``entries``, re-chained; keep only the checkpoints that still agree with it."""
    db.execute("DELETE FROM log")
    prev = GENESIS_HASH
    for index, (kind, provenance_id, document, signature) in enumerate(entries):
        digest = entry_hash(index, prev, document, signature)
        db.execute("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (index, kind, provenance_id, document, signature, prev, digest))
        prev = digest
    heads = chain_heads([_Row(*entry) for entry in entries])
    for cp_id, size, head in list(db.execute("SELECT id, log_size, head_hash FROM checkpoints")):
        if size >= len(heads) or heads[size] != head:
            db.execute("DELETE FROM checkpoints WHERE id = ?", (cp_id,))


@dataclass(frozen=True)
class _Row:
    kind: str
    provenance_id: str
    document: str
    signature: str


# -- the scenarios ------------------------------------------------------------------------------------------

def unrevoke_view(victim: Victim) -> None:
    """The issue's own example: un-revoke B in the keys table."""
    with _connect(victim) as db:
        db.execute("UPDATE keys SET status='active', revocation=NULL, revocation_signature=NULL "
                   "WHERE provenance_id = ?", (victim.ids["B"],))


def unrevoke_log(victim: Victim) -> None:
    """Un-revoke B in the keys table AND drop its revocation from the log, re-chaining the rest."""
    unrevoke_view(victim)
    with _connect(victim) as db:
        _rewrite_log(db, [e for e in _log(db) if e[0] != "revoke"])


def delete_view(victim: Victim) -> None:
    """The issue's other example: DELETE a deployment's row (A)."""
    with _connect(victim) as db:
        db.execute("DELETE FROM keys WHERE provenance_id = ?", (victim.ids["A"],))


def delete_log_entry(victim: Victim) -> None:
    """Delete A's row and its log entry, leaving a gap in the chain."""
    delete_view(victim)
    with _connect(victim) as db:
        db.execute("DELETE FROM log WHERE provenance_id = ?", (victim.ids["A"],))


def delete_rechained(victim: Victim) -> None:
    """Delete A's row and its log entry, re-chain the rest and drop the checkpoints that no longer agree."""
    delete_view(victim)
    with _connect(victim) as db:
        _rewrite_log(db, [e for e in _log(db) if e[1] != victim.ids["A"]])


def reorder(victim: Victim) -> None:
    """Swap two log entries (issue B and issue C) in place."""
    with _connect(victim) as db:
        rows = {idx: row for idx, *row in db.execute("SELECT idx, kind, provenance_id, document, signature, "
                                                     "prev_hash, entry_hash FROM log")}
        db.execute("DELETE FROM log WHERE idx IN (1, 3)")
        for idx, source in ((1, 3), (3, 1)):
            db.execute("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)", (idx, *rows[source]))


def reorder_rechained(victim: Victim) -> None:
    """Move issue C before issue B, re-chain, drop the checkpoints that no longer agree."""
    with _connect(victim) as db:
        entries = _log(db)
        _rewrite_log(db, [entries[0], entries[3], entries[1], entries[2]])


def rollback(victim: Victim) -> None:
    """Restore the older copy of the database (before B's revocation): internally consistent."""
    for suffix in ("-wal", "-shm"):
        (victim.folder / (REGISTRY_FILE + suffix)).unlink(missing_ok=True)
    shutil.copyfile(victim.old_copy, victim.folder / REGISTRY_FILE)


def swap_issuer(victim: Victim) -> None:
    """Bring a new issuer key, re-sign every record, drop the revocation, rebuild log and checkpoint."""
    mallory = IssuerKey.generate(victim.issuer.name)
    with _connect(victim) as db:
        db.execute("DELETE FROM issuers")
        db.execute("INSERT INTO issuers VALUES (?, ?, ?, ?)",
                   (mallory.key_id, mallory.name, mallory.public_key_pem(), utc_now()))
        entries = []
        for provenance_id, record_text in list(db.execute("SELECT provenance_id, record FROM keys ORDER BY rowid")):
            record = ProvenanceRecord.from_dict(json.loads(record_text))
            forged = sign(ProvenanceRecord(**{**_fields(record), "key_id": mallory.key_id}), mallory)
            db.execute("UPDATE keys SET issuer_key_id=?, record=?, signature=?, status='active', revocation=NULL, "
                       "revocation_signature=NULL WHERE provenance_id=?",
                       (mallory.key_id, forged.text, to_base64(forged.signature), provenance_id))
            entries.append(("issue", provenance_id, forged.text, to_base64(forged.signature)))
        db.execute("DELETE FROM checkpoints")
        _rewrite_log(db, entries)
        heads = chain_heads([_Row(*entry) for entry in entries])
        checkpoint = sign(Checkpoint(log_size=len(entries), head_hash=heads[-1], key_id=mallory.key_id,
                                     created_at=utc_now()), mallory)
        db.execute("INSERT INTO checkpoints (log_size, head_hash, key_id, document, signature) VALUES (?,?,?,?,?)",
                   (len(entries), heads[-1], mallory.key_id, checkpoint.text, to_base64(checkpoint.signature)))


def _fields(record: ProvenanceRecord) -> dict:
    return {name: getattr(record, name) for name in ("provenance_id", "watermark", "issuer", "key_id", "model",
                                                     "deployment", "created_at", "software_version",
                                                     "signature_algorithm", "version")}


def _flip_first_digit(key_hex: str) -> str:
    return ("0" if key_hex[0] != "0" else "1") + key_hex[1:]


def edit_key_bits(victim: Victim) -> None:
    """Point A's row at other key bits (so another deployment's images would attribute to A)."""
    with _connect(victim) as db:
        (key_hex,) = db.execute("SELECT key_hex FROM keys WHERE provenance_id=?", (victim.ids["A"],)).fetchone()
        db.execute("UPDATE keys SET key_hex=? WHERE provenance_id=?", (_flip_first_digit(key_hex), victim.ids["A"]))


def edit_key_bits_everywhere(victim: Victim) -> None:
    """Edit A's key bits in the row, its stored record and its log entry, and re-chain the log."""
    with _connect(victim) as db:
        (key_hex, record) = db.execute("SELECT key_hex, record FROM keys WHERE provenance_id=?",
                                       (victim.ids["A"],)).fetchone()
        new_hex = _flip_first_digit(key_hex)
        new_record = record.replace(key_hex, new_hex)
        db.execute("UPDATE keys SET key_hex=?, record=? WHERE provenance_id=?", (new_hex, new_record, victim.ids["A"]))
        entries = [(k, p, d.replace(key_hex, new_hex) if p == victim.ids["A"] and k == "issue" else d, s)
                   for k, p, d, s in _log(db)]
        _rewrite_log(db, entries)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    attack: Callable[[Victim], None] | None
    pinned: str  # what the auditor checks with: "trust", "trust+pin", "pin"
    expect: str  # a phrase the one-line reason must contain ("" for clean)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("untouched", "no change", None, "trust+pin", ""),
    Scenario("un-revoke (keys table)", "UPDATE keys SET status='active', revocation=NULL, ...", unrevoke_view,
             "trust", "it was un-revoked"),
    Scenario("un-revoke (log rewritten too)", "also drop the revocation entry, re-chain, drop stale checkpoints",
             unrevoke_log, "trust", "later checkpoints were deleted and the log rewritten"),
    Scenario("delete (keys table)", "DELETE FROM keys WHERE provenance_id = A", delete_view, "trust",
             "the row was deleted"),
    Scenario("delete (log entry too)", "also DELETE A's log entry", delete_log_entry, "trust",
             "an entry was deleted from the log"),
    Scenario("delete (log re-chained)", "delete A's row and entry, re-chain, drop stale checkpoints",
             delete_rechained, "trust", "no signed checkpoint"),
    Scenario("reorder", "swap log entries 1 and 3 in place", reorder, "trust", "the log was reordered"),
    Scenario("reorder (re-chained)", "move issue C before issue B, re-chain, drop stale checkpoints",
             reorder_rechained, "trust", "later checkpoints were deleted and the log rewritten"),
    Scenario("rollback to an older copy", "restore registry.sqlite from before B's revocation", rollback,
             "trust+pin", "rolled back"),
    Scenario("issuer key swap (pinned checkpoint)", "new issuer key, every record re-signed, revocation dropped, "
             "log and checkpoint rebuilt", swap_issuer, "pin", "issuer key swapped"),
    Scenario("issuer key swap (pinned --trust key)", "as above, checked against the pinned issuer public key",
             swap_issuer, "trust", "is not among the trusted public keys"),
    Scenario("edited key bits (keys table)", "UPDATE keys SET key_hex = <one hex digit changed>", edit_key_bits,
             "trust", "the key bits were edited"),
    Scenario("edited key bits (record and log too)", "edit the bits in the row, the record and the log entry; "
             "re-chain", edit_key_bits_everywhere, "trust", "altered or forged"),
)


def run_scenario(scenario: Scenario, root: Path, issuer: IssuerKey | None = None) -> CheckReport:
    """Build a victim under ``root``, attack it, and return what ``Registry.check`` says."""
    victim = build_victim(root, issuer)
    if scenario.attack is not None:
        scenario.attack(victim)
    trusted = victim.trusted if "trust" in scenario.pinned else None
    pin = victim.pin() if "pin" in scenario.pinned else None
    with Registry.open(victim.folder) as registry:
        return registry.check(trusted, pin=pin)

