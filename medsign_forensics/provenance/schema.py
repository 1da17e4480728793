"""The registry's SQLite schema and its migrations.

One folder holds ``registry.sqlite`` (plus SQLite's transient ``-wal``/``-shm`` files while it is open).
Everything lives in that one database so that a write is one transaction:

* ``issuers`` — key id, name and PEM public key of every issuer whose signatures the registry holds;
* ``keys`` — one row per deployment: provenance ID, key (hex), key length, issuer key id, the signed
  record's canonical JSON and base64 signature, status (``active``/``revoked``), and for revoked rows the
  signed revocation and its signature.

Schema version 2 adds the append-only log (:mod:`medsign_forensics.provenance.log`):

* ``log`` — one row per issue or revocation: index, kind, provenance ID, the signed document's canonical JSON
  and base64 signature, the previous entry's hash and this entry's hash; triggers refuse UPDATE and DELETE;
* ``checkpoints`` — issuer-signed (log size, head hash) documents, one written with every issue/revocation in
  the same transaction as the entry.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` brings an older file up to date
inside a write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsign_forensics.provenance.records import SignedDocument

REGISTRY_FILE = "registry.sqlite"
SCHEMA_VERSION = 2
LOG_SCHEMA_VERSION = 2  # the first version with the append-only log
# The ``keys`` columns in the order :func:`medsign_forensics.provenance.entries.entry_from_row` reads them.
KEY_COLUMNS = ("provenance_id, key_hex, bits, issuer_key_id, status, record, signature, revocation, "
               "revocation_signature, created_at")

MIGRATIONS: dict[int, tuple[str, ...]] = {
    # version reached -> statements that lead there from the previous version
    1: (
        """CREATE TABLE issuers (
            key_id TEXT PRIMARY KEY CHECK (length(key_id) = 64),
            name TEXT NOT NULL,
            public_key_pem TEXT NOT NULL,
            added_at TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE keys (
            provenance_id TEXT PRIMARY KEY,
            key_hex TEXT NOT NULL UNIQUE,
            bits INTEGER NOT NULL,
            issuer_key_id TEXT NOT NULL REFERENCES issuers(key_id),
            record TEXT NOT NULL,
            signature TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
            revocation TEXT,
            revocation_signature TEXT,
            created_at TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX keys_by_bits ON keys(bits)",
    ),
    2: (
        """CREATE TABLE log (
            idx INTEGER PRIMARY KEY CHECK (idx >= 0),
            kind TEXT NOT NULL CHECK (kind IN ('issue', 'revoke')),
            provenance_id TEXT NOT NULL,
            document TEXT NOT NULL,
            signature TEXT NOT NULL,
            prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
            entry_hash TEXT NOT NULL UNIQUE CHECK (length(entry_hash) = 64)
        ) STRICT""",
        """CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            log_size INTEGER NOT NULL CHECK (log_size >= 0),
            head_hash TEXT NOT NULL CHECK (length(head_hash) = 64),
            key_id TEXT NOT NULL,
            document TEXT NOT NULL,
            signature TEXT NOT NULL
        ) STRICT""",
        *(f"""CREATE TRIGGER {table}_append_only_{action.lower()} BEFORE {action} ON {table}
              BEGIN SELECT RAISE(ABORT, 'the registry {table} table is append-only'); END"""
          for table in ("log", "checkpoints") for action in ("UPDATE", "DELETE")),
    ),
}


@dataclass(frozen=True)
class MigrationResult:
    """What :meth:`Registry.migrate` did."""

    folder: Path
    from_version: int
    log_size: int
    head_hash: str
    checkpoint: SignedDocument | None  # the checkpoint signed now, if an issuer key was given

    def to_dict(self) -> dict[str, Any]:
        return {"registry": str(self.folder), "from_version": self.from_version, "schema_version": SCHEMA_VERSION,
                "log_size": self.log_size, "head_hash": self.head_hash,
                "checkpoint_signed": self.checkpoint is not None,
                "checkpoint": None if self.checkpoint is None else self.checkpoint.text}
