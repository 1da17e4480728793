"""The SQL side of the append-only log: appending entries and checkpoints, reading them back, and building the
log once from the rows of a version-1 registry. Every function runs on the registry's connection, inside the
transaction its caller opened, so an entry and its checkpoint are committed together or not at all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from medsign_forensics.errors import RegistryError
from medsign_forensics.provenance.canonical import to_base64
from medsign_forensics.provenance.checks import row_problems, usable_issuer_keys
from medsign_forensics.provenance.entries import Issuer, entry_from_row, signature_bytes, stored_bytes
from medsign_forensics.provenance.keys import Signer
from medsign_forensics.provenance.log import GENESIS_HASH, EntryKind, LogEntry, StoredCheckpoint, entry_hash
from medsign_forensics.provenance.records import Checkpoint, SignedDocument, sign, utc_now
from medsign_forensics.provenance.schema import KEY_COLUMNS


def log_head(db: sqlite3.Connection) -> tuple[int, str]:
    """(log size, hash of the last entry); (0, the genesis hash) for an empty log."""
    last = db.execute("SELECT idx, entry_hash FROM log ORDER BY idx DESC LIMIT 1").fetchone()
    return (0, GENESIS_HASH) if last is None else (int(last[0]) + 1, last[1])


def append_entry(db: sqlite3.Connection, kind: EntryKind, provenance_id: str, signed: SignedDocument) -> str:
    """Chain ``signed`` onto the log; returns the new entry's hash."""
    index, prev_hash = log_head(db)
    signature = to_base64(signed.signature)
    digest = entry_hash(index, prev_hash, signed.text, signature)
    db.execute("INSERT INTO log (idx, kind, provenance_id, document, signature, prev_hash, entry_hash) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)", (index, kind.value, provenance_id, signed.text, signature,
                                                prev_hash, digest))
    return digest


def write_checkpoint(db: sqlite3.Connection, issuer: Signer) -> SignedDocument:
    """Sign and store a checkpoint over the current head."""
    size, head = log_head(db)
    signed = sign(Checkpoint(log_size=size, head_hash=head, key_id=issuer.key_id, created_at=utc_now()), issuer)
    db.execute("INSERT INTO checkpoints (log_size, head_hash, key_id, document, signature) VALUES (?, ?, ?, ?, ?)",
               (size, head, issuer.key_id, signed.text, to_base64(signed.signature)))
    return signed


def read_log(db: sqlite3.Connection) -> list[LogEntry]:
    """The log, oldest first."""
    rows = db.execute("SELECT idx, kind, provenance_id, document, signature, prev_hash, entry_hash "
                      "FROM log ORDER BY idx")
    return [LogEntry(*row) for row in rows]


def read_checkpoints(db: sqlite3.Connection) -> list[StoredCheckpoint]:
    """Every stored checkpoint, oldest first."""
    rows = db.execute("SELECT id, log_size, head_hash, key_id, document, signature FROM checkpoints ORDER BY id")
    return [StoredCheckpoint(*row) for row in rows]


def latest_checkpoint(db: sqlite3.Connection) -> SignedDocument | None:
    """The stored checkpoint covering the most entries (the newest among equals), or None."""
    row = db.execute("SELECT document, signature FROM checkpoints ORDER BY log_size DESC, id DESC "
                     "LIMIT 1").fetchone()
    return None if row is None else SignedDocument(payload=stored_bytes(row[0]), signature=signature_bytes(row[1]))


def build_log(db: sqlite3.Connection, folder: Path) -> None:
    """Append every existing row's signed record and revocation to the (new, empty) log, oldest first.

    Each row is verified first: migrating must not launder a tampered row into the log. An un-revocation
    done before the migration cannot be seen (the v1 file kept no history): the log starts from what the
    rows hold now.
    """
    issuers = [Issuer(*row) for row in db.execute("SELECT key_id, name, public_key_pem, added_at FROM issuers")]
    keys, _ = usable_issuer_keys(issuers, None)
    events: list[tuple[tuple[str, int, int], EntryKind, str, SignedDocument]] = []
    for rowid, *columns in db.execute(f"SELECT rowid, {KEY_COLUMNS} FROM keys"):
        entry = entry_from_row(columns)
        problems, record, revocation = row_problems(entry, keys)
        if problems:
            raise RegistryError(f"cannot build the log: row {entry.provenance_id} fails its check "
                                f"({problems[0][1]}); run `medsign keys check`, repair or restore the registry "
                                "first", path=folder)
        assert record is not None
        events.append(((record.created_at, 0, rowid), EntryKind.ISSUE, entry.provenance_id, entry.signed_record))
        if revocation is not None and entry.signed_revocation is not None:
            when = max(revocation.revoked_at, record.created_at)
            events.append(((when, 1, rowid), EntryKind.REVOKE, entry.provenance_id, entry.signed_revocation))
    for _, kind, provenance_id, signed in sorted(events, key=lambda event: event[0]):
        append_entry(db, kind, provenance_id, signed)
