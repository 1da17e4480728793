"""The key registry: which k-bit keys belong to which deployment, under whose signature.

Layout: one folder holding ``registry.sqlite`` (plus SQLite's transient ``-wal``/``-shm`` files while it is
open). Everything lives in that one database so that a write is one transaction:

* ``issuers`` — key id, name and PEM public key of every issuer whose signatures the registry holds;
* ``keys`` — one row per deployment: provenance ID, key (hex), key length, issuer key id, the signed
  record's canonical JSON and base64 signature, status (``active``/``revoked``), and for revoked rows the
  signed revocation and its signature.

The key, length, issuer and time columns repeat fields of the signed record so that SQL can index them;
:meth:`Registry.check` proves they agree with the signed bytes, so editing a column is as detectable as editing
the record. An attacker who can write the file and also replaces an issuer's public key can re-sign
everything; pin the issuer keys you trust (``check(trusted=...)``, ``keys check --trust FILE``) to catch that.

Concurrency: WAL journal, ``synchronous=FULL``, a 30 s busy timeout, every write inside ``BEGIN IMMEDIATE``
(the write lock is taken before anything is read) with a bounded retry on SQLITE_BUSY. The minimum-distance
check of :meth:`Registry.issue` reads the existing keys inside that same transaction, so two processes can
never both insert keys that are too close to each other. The schema is versioned with ``PRAGMA user_version``;
:data:`MIGRATIONS` brings an older file up to date inside a write transaction.

Schema version 2 adds the append-only log (:mod:`medsign_forensics.provenance.log`):

* ``log`` — one row per issue or revocation: index, kind, provenance ID, the signed document's canonical JSON
  and base64 signature, the previous entry's hash and this entry's hash; triggers refuse UPDATE and DELETE;
* ``checkpoints`` — issuer-signed (log size, head hash) documents, one written with every issue/revocation in
  the same transaction as the entry.

The ``keys`` table stays the lookup view; :meth:`Registry.check` proves it equals the log. A version-1 file is
NOT upgraded when it is opened (opening must not write: ``medsign verify`` opens the shipped demo registry
read-only in spirit); it reads as before and :meth:`check` warns that it has no log. It is upgraded by
:meth:`Registry.migrate` (``medsign keys migrate``), which builds the log from the rows' own signed records
and revocations (each verified first) and, given the issuer key, signs a first checkpoint; or implicitly by the
first :meth:`issue`/:meth:`revoke`, whose checkpoint then covers the migrated entries too.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medsign_forensics.config import DEFAULT_KEY_BITS
from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.key import bits_to_hex, check_length, hex_matrix, match_counts, random_key
from medsign_forensics.provenance.canonical import from_base64, parse_canonical, to_base64
from medsign_forensics.provenance.keys import IssuerKey, Signer, key_id_of, load_public_key_pem, public_key_pem
from medsign_forensics.provenance.log import (
    GENESIS_HASH,
    CheckpointPin,
    EntryKind,
    LogEntry,
    LogState,
    StoredCheckpoint,
    audit,
    entry_hash,
)
from medsign_forensics.provenance.policy import Policy
from medsign_forensics.provenance.records import (
    Checkpoint,
    ModelInfo,
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

REGISTRY_FILE = "registry.sqlite"
SCHEMA_VERSION = 2
LOG_SCHEMA_VERSION = 2  # the first version with the append-only log
BUSY_TIMEOUT_S = 30.0
WRITE_ATTEMPTS = 8
MAX_KEY_DRAWS = 10_000

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

T = TypeVar("T")


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
        return _hex_matrix([self.key_hex], self.bits)[0]

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


class Registry:
    """An open registry folder. Open with :meth:`open` (or :meth:`create`); close or use as a context manager."""

    def __init__(self, folder: Path, connection: sqlite3.Connection) -> None:
        self.folder = folder
        self._db = connection

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, *, create: bool = False) -> Registry:
        """Open the registry in ``folder``; with ``create=True`` make the folder and database if absent."""
        folder = Path(folder)
        path = folder / REGISTRY_FILE
        if not path.is_file():
            if not create:
                raise RegistryError(f"no registry here (expected {REGISTRY_FILE}); create one with "
                                    "`medsign keys init --registry DIR`", path=folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise RegistryError(f"cannot create the registry folder: {error.strerror}", path=folder) from None
        try:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise RegistryError(f"cannot open the registry database: {error}", path=path) from None
        registry = cls(folder, connection)
        try:
            registry._prepare()
        except BaseException:
            connection.close()
            raise
        return registry

    @classmethod
    def create(cls, folder: str | Path) -> Registry:
        return cls.open(folder, create=True)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self) -> None:
        path = self.folder / REGISTRY_FILE
        try:
            mode = self._retry(lambda: self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise RegistryError(f"the registry could not switch to WAL journaling (got {mode!r})", path=path)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise RegistryError(f"not a usable SQLite registry ({error}); restore it from a backup",
                                path=path) from None
        if version > SCHEMA_VERSION:
            raise RegistryError(f"the registry has schema version {version}, newer than this software's "
                                f"{SCHEMA_VERSION}; upgrade medsign-forensics", path=path)
        if version == 0:  # a new, empty file: create the current schema (a version-1 file waits for migrate)
            self._write(self._migrate)

    def _migrate(self, db: sqlite3.Connection) -> None:
        # Re-read inside the write transaction: another process may have migrated meanwhile.
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                db.execute(statement)
            if target == LOG_SCHEMA_VERSION and version > 0:
                self._build_log(db)
            db.execute(f"PRAGMA user_version = {target}")

    def _build_log(self, db: sqlite3.Connection) -> None:
        """Append every existing row's signed record and revocation to the (new, empty) log, oldest first.

        Each row is verified first: migrating must not launder a tampered row into the log. An un-revocation
        done before the migration cannot be seen (the v1 file kept no history): the log starts from what the
        rows hold now.
        """
        issuers = [Issuer(*row) for row in db.execute("SELECT key_id, name, public_key_pem, added_at FROM issuers")]
        keys, _ = _usable_issuer_keys(issuers, None)
        events: list[tuple[tuple[str, int, int], EntryKind, str, SignedDocument]] = []
        rows = db.execute(f"SELECT rowid, {self._COLUMNS} FROM keys")
        for rowid, *columns in rows:
            entry = _entry(columns)
            problems, record, revocation = _row_problems(entry, keys)
            if problems:
                raise RegistryError(f"cannot build the log: row {entry.provenance_id} fails its check "
                                    f"({problems[0][1]}); run `medsign keys check`, repair or restore the registry "
                                    "first", path=self.folder)
            assert record is not None
            events.append(((record.created_at, 0, rowid), EntryKind.ISSUE, entry.provenance_id, entry.signed_record))
            if revocation is not None and entry.signed_revocation is not None:
                when = max(revocation.revoked_at, record.created_at)
                events.append(((when, 1, rowid), EntryKind.REVOKE, entry.provenance_id, entry.signed_revocation))
        for _, kind, provenance_id, signed in sorted(events, key=lambda event: event[0]):
            self._append_entry(db, kind, provenance_id, signed)

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- transactions ------------------------------------------------------------------------------------

    def _retry(self, action: Callable[[], T]) -> T:
        """Run ``action``, retrying with jittered back-off while SQLite reports the database busy."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return action()
            except sqlite3.OperationalError as error:
                message = str(error).lower()
                if ("locked" not in message and "busy" not in message) or attempt == WRITE_ATTEMPTS - 1:
                    raise RegistryError(f"the registry database is unavailable: {error}; another process may "
                                        "hold it for too long, try again", path=self.folder) from None
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        raise AssertionError("unreachable")

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction: all of it is committed or none of it."""

        def attempt() -> T:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            return result

        return self._retry(attempt)

    # -- issuers -----------------------------------------------------------------------------------------

    def add_issuer(self, public_key: Ed25519PublicKey, name: str) -> Issuer:
        """Register an issuer public key (idempotent: an already registered key is returned unchanged)."""
        return self._write(lambda db: self._add_issuer(db, public_key, name))

    @staticmethod
    def _add_issuer(db: sqlite3.Connection, public_key: Ed25519PublicKey, name: str) -> Issuer:
        key_id = key_id_of(public_key)
        db.execute("INSERT OR IGNORE INTO issuers (key_id, name, public_key_pem, added_at) VALUES (?, ?, ?, ?)",
                   (key_id, name, public_key_pem(public_key), utc_now()))
        row = db.execute("SELECT key_id, name, public_key_pem, added_at FROM issuers WHERE key_id = ?",
                         (key_id,)).fetchone()
        return Issuer(*row)

    def issuers(self) -> list[Issuer]:
        rows = self._db.execute("SELECT key_id, name, public_key_pem, added_at FROM issuers ORDER BY added_at")
        return [Issuer(*row) for row in rows]

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """Issuer key id -> public key, for verifying records and image statements.

        Only keys whose stored id is the SHA-256 of their DER form are returned; :meth:`check` reports others.
        """
        return _usable_issuer_keys(self.issuers(), None)[0]

    # -- issuing and revoking ----------------------------------------------------------------------------

    def issue(self, issuer: IssuerKey, *, model: ModelInfo, deployment: str, policy: Policy,
              bits: int | None = None, rng: np.random.Generator | None = None) -> RegistryEntry:
        """Draw a new key at least ``policy.min_hamming_distance`` bits from every registered key of the same
        length (active or revoked: old images still carry revoked keys), give it a fresh provenance ID, sign
        the record with ``issuer`` and store it, all in one write transaction.
        """
        bits = policy.key_bits if bits is None else bits
        check_length(bits)
        rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))

        def body(db: sqlite3.Connection) -> RegistryEntry:
            self._migrate(db)  # a version-1 file gets its log first, in this same transaction
            self._add_issuer(db, issuer.public_key, issuer.name)
            existing = _hex_matrix([row[0] for row in db.execute("SELECT key_hex FROM keys WHERE bits = ?",
                                                                 (bits,))], bits)
            key = _draw_distant_key(existing, bits, policy.min_hamming_distance, rng)
            provenance_id = new_provenance_id()
            while db.execute("SELECT 1 FROM keys WHERE provenance_id = ?", (provenance_id,)).fetchone():
                provenance_id = new_provenance_id()
            record = ProvenanceRecord(
                provenance_id=provenance_id,
                watermark=WatermarkPayload(key_hex=bits_to_hex(key), bits=bits),
                issuer=issuer.name, key_id=issuer.key_id, model=model, deployment=deployment,
                created_at=utc_now(),
            )
            signed = sign(record, issuer)
            db.execute(
                "INSERT INTO keys (provenance_id, key_hex, bits, issuer_key_id, record, signature, status, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (provenance_id, record.watermark.key_hex, bits, issuer.key_id, signed.text,
                 to_base64(signed.signature), KeyStatus.ACTIVE.value, record.created_at),
            )
            self._append_entry(db, EntryKind.ISSUE, provenance_id, signed)
            self._write_checkpoint(db, issuer)
            return RegistryEntry(provenance_id=provenance_id, key_hex=record.watermark.key_hex, bits=bits,
                                 issuer_key_id=issuer.key_id, status=KeyStatus.ACTIVE, signed_record=signed,
                                 signed_revocation=None, created_at=record.created_at)

        return self._write(body)

    def revoke(self, identifier: str, issuer: Signer, *, reason: str) -> RegistryEntry:
        """Mark a deployment revoked with a revocation signed by the issuer that signed its record."""

        def body(db: sqlite3.Connection) -> RegistryEntry:
            self._migrate(db)
            entry = self._get(db, identifier)
            if entry.status is KeyStatus.REVOKED:
                raise RegistryError(f"{entry.provenance_id} is already revoked", path=self.folder)
            if issuer.key_id != entry.issuer_key_id:
                raise RegistryError(f"{entry.provenance_id} was issued by key {entry.issuer_key_id[:16]}...; "
                                    "only that issuer key can revoke it", path=self.folder)
            revocation = Revocation(provenance_id=entry.provenance_id, record_sha256=entry.signed_record.sha256,
                                    key_id=issuer.key_id, revoked_at=utc_now(), reason=reason)
            signed = sign(revocation, issuer)
            db.execute("UPDATE keys SET status = ?, revocation = ?, revocation_signature = ? "
                       "WHERE provenance_id = ?",
                       (KeyStatus.REVOKED.value, signed.text, to_base64(signed.signature), entry.provenance_id))
            self._append_entry(db, EntryKind.REVOKE, entry.provenance_id, signed)
            self._write_checkpoint(db, issuer)
            return self._get(db, entry.provenance_id)

        return self._write(body)

    # -- the append-only log -----------------------------------------------------------------------------

    @property
    def has_log(self) -> bool:
        return self.schema_version >= LOG_SCHEMA_VERSION

    @staticmethod
    def _append_entry(db: sqlite3.Connection, kind: EntryKind, provenance_id: str, signed: SignedDocument) -> str:
        last = db.execute("SELECT idx, entry_hash FROM log ORDER BY idx DESC LIMIT 1").fetchone()
        index, prev_hash = (0, GENESIS_HASH) if last is None else (int(last[0]) + 1, last[1])
        signature = to_base64(signed.signature)
        digest = entry_hash(index, prev_hash, signed.text, signature)
        db.execute("INSERT INTO log (idx, kind, provenance_id, document, signature, prev_hash, entry_hash) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (index, kind.value, provenance_id, signed.text, signature,
                                                    prev_hash, digest))
        return digest

    @staticmethod
    def _head(db: sqlite3.Connection) -> tuple[int, str]:
        last = db.execute("SELECT idx, entry_hash FROM log ORDER BY idx DESC LIMIT 1").fetchone()
        return (0, GENESIS_HASH) if last is None else (int(last[0]) + 1, last[1])

    def _write_checkpoint(self, db: sqlite3.Connection, issuer: Signer) -> SignedDocument:
        size, head = self._head(db)
        signed = sign(Checkpoint(log_size=size, head_hash=head, key_id=issuer.key_id, created_at=utc_now()), issuer)
        db.execute("INSERT INTO checkpoints (log_size, head_hash, key_id, document, signature) VALUES (?, ?, ?, ?, ?)",
                   (size, head, issuer.key_id, signed.text, to_base64(signed.signature)))
        return signed

    def _require_issuer(self, db: sqlite3.Connection, issuer: Signer) -> None:
        if db.execute("SELECT 1 FROM issuers WHERE key_id = ?", (issuer.key_id,)).fetchone() is None:
            raise RegistryError(f"key {issuer.key_id[:16]}... is not an issuer key of this registry; sign its "
                                "checkpoints with a key that issued its records", path=self.folder)

    def migrate(self, issuer: Signer | None = None) -> MigrationResult:
        """Bring the registry to the current schema, building the log from the existing signed rows.

        With ``issuer`` (a key already registered here) a checkpoint over the head is signed in the same
        transaction, unless one already covers it. Without it the log exists but nothing signed vouches for its
        head; :meth:`check` says so. Safe to run twice.
        """

        def body(db: sqlite3.Connection) -> MigrationResult:
            before = int(db.execute("PRAGMA user_version").fetchone()[0])
            self._migrate(db)
            signed = None
            if issuer is not None:
                self._require_issuer(db, issuer)
                size, head = self._head(db)
                covered = db.execute("SELECT 1 FROM checkpoints WHERE log_size = ? AND head_hash = ? AND key_id = ?",
                                     (size, head, issuer.key_id)).fetchone()
                if covered is None:
                    signed = self._write_checkpoint(db, issuer)
            size, head = self._head(db)
            return MigrationResult(folder=self.folder, from_version=before, log_size=size, head_hash=head,
                                   checkpoint=signed)

        return self._write(body)

    def sign_checkpoint(self, issuer: Signer) -> SignedDocument:
        """Sign and store a checkpoint over the current head (e.g. after a migration without the issuer key)."""

        def body(db: sqlite3.Connection) -> SignedDocument:
            if int(db.execute("PRAGMA user_version").fetchone()[0]) < LOG_SCHEMA_VERSION:
                raise RegistryError("this registry has schema version 1 and no log yet; run `medsign keys migrate "
                                    "--registry DIR --issuer-key KEY` first", path=self.folder)
            self._require_issuer(db, issuer)
            return self._write_checkpoint(db, issuer)

        return self._write(body)

    def log_entries(self) -> list[LogEntry]:
        """The log, oldest first (empty for a schema-1 registry)."""
        if not self.has_log:
            return []
        rows = self._db.execute("SELECT idx, kind, provenance_id, document, signature, prev_hash, entry_hash "
                                "FROM log ORDER BY idx")
        return [LogEntry(*row) for row in rows]

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, oldest first."""
        if not self.has_log:
            return []
        rows = self._db.execute("SELECT id, log_size, head_hash, key_id, document, signature FROM checkpoints "
                                "ORDER BY id")
        return [StoredCheckpoint(*row) for row in rows]

    def head(self) -> tuple[int, str]:
        """(log size, head hash) as stored; :meth:`check` proves they are right."""
        if not self.has_log:
            raise RegistryError("this registry has schema version 1 and no log; run `medsign keys migrate`",
                                path=self.folder)
        return self._head(self._db)

    def latest_checkpoint(self) -> SignedDocument | None:
        """The stored checkpoint covering the most entries (the newest among equals), or None."""
        if not self.has_log:
            return None
        row = self._db.execute("SELECT document, signature FROM checkpoints ORDER BY log_size DESC, id DESC "
                               "LIMIT 1").fetchone()
        return None if row is None else SignedDocument(payload=_stored_bytes(row[0]),
                                                       signature=_signature_bytes(row[1]))

    # -- reading -----------------------------------------------------------------------------------------

    _COLUMNS = ("provenance_id, key_hex, bits, issuer_key_id, status, record, signature, revocation, "
                "revocation_signature, created_at")

    def get(self, identifier: str) -> RegistryEntry:
        """The row for a provenance ID or a full key in hex; RegistryError when there is none."""
        return self._get(self._db, identifier)

    def _get(self, db: sqlite3.Connection, identifier: str) -> RegistryEntry:
        identifier = identifier.strip().lower()
        row = db.execute(f"SELECT {self._COLUMNS} FROM keys WHERE provenance_id = ? OR key_hex = ?",
                         (identifier, identifier)).fetchone()
        if row is None:
            raise RegistryError(f"no deployment with provenance ID or key {identifier!r} in this registry; "
                                "see `medsign keys list`", path=self.folder)
        return _entry(row)

    def entries(self, *, status: KeyStatus | None = None) -> list[RegistryEntry]:
        """All rows (optionally of one status), oldest first."""
        query = f"SELECT {self._COLUMNS} FROM keys"
        params: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status.value,)
        return [_entry(row) for row in self._db.execute(query + " ORDER BY created_at, rowid", params)]

    def lookup(self, bits: int = DEFAULT_KEY_BITS) -> Candidates:
        """Every active and revoked key of length ``bits``, ready for :meth:`Candidates.match_counts`."""
        check_length(bits)
        rows = self._db.execute(f"SELECT {self._COLUMNS} FROM keys WHERE bits = ? ORDER BY rowid", (bits,))
        entries = tuple(_entry(row) for row in rows)
        return Candidates(bits=bits, entries=entries, keys=_hex_matrix([e.key_hex for e in entries], bits))

    def verify_entry(self, entry: RegistryEntry,
                     trusted: Mapping[str, Ed25519PublicKey] | None = None) -> VerifiedEntry:
        """Check one row's signatures and column consistency; raise :class:`SignatureError` on the first fault.

        ``trusted`` (key id -> public key) pins the issuer keys; by default the registry's own are used.
        """
        keys = self.public_keys() if trusted is None else dict(trusted)
        problems, record, revocation = _row_problems(entry, keys)
        if problems:
            failure, message = problems[0]
            raise SignatureError(f"registry row {entry.provenance_id}: {message}", failure=failure)
        assert record is not None
        return VerifiedEntry(entry=entry, record=record, revocation=revocation)

    def check(self, trusted: Mapping[str, Ed25519PublicKey] | None = None, *,
              pin: CheckpointPin | None = None, require_anchor: bool = True) -> CheckReport:
        """Verify every issuer key id, every row's signatures, the whole log chain, that the keys view equals
        the log, the checkpoints' signatures and (optionally) an auditor's pinned checkpoint. Report, do not
        raise, what fails; :attr:`CheckReport.reason` is the first problem on one line.

        A history nothing vouches for — a schema-1 registry without a log, or a non-empty log without a valid
        signed checkpoint and without a pin — fails too (an attacker can reach that state by deleting the log or
        the checkpoints), unless ``require_anchor=False``, which turns it into a warning.
        """
        issuers = self.issuers()
        keys, issuer_problems = _usable_issuer_keys(issuers, trusted)
        entries = self.entries()
        rows = tuple(_row_check(entry, keys) for entry in entries)
        version = self.schema_version
        if version < LOG_SCHEMA_VERSION:
            anchor = ("schema version 1: this registry has no append-only log, so an un-revoked or deleted row "
                      "cannot be detected; run `medsign keys migrate --registry DIR [--issuer-key KEY]`")
            log_problems: tuple[str, ...] = ()
            if pin is not None:
                log_problems = ("a checkpoint was pinned but this registry has no log (schema version 1): it was "
                                "replaced by an older copy, or never migrated",)
            return CheckReport(folder=self.folder, issuer_problems=tuple(issuer_problems), rows=rows,
                               issuers_checked=len(issuers), log_problems=log_problems,
                               warnings=() if require_anchor else (anchor,), log=None, schema_version=version,
                               anchor_problem=anchor if require_anchor else None)
        result = audit(self.log_entries(), self.checkpoints(), entries, keys,
                       registry_key_ids=[issuer.key_id for issuer in issuers],
                       trusted_ids=None if trusted is None else list(trusted), pin=pin)
        anchor_problem = result.anchor_problem
        warnings = () if anchor_problem is None or require_anchor else (anchor_problem,)
        return CheckReport(folder=self.folder, issuer_problems=tuple(issuer_problems), rows=rows,
                           issuers_checked=len(issuers), log_problems=tuple(result.problems), warnings=warnings,
                           log=result.state, schema_version=version,
                           anchor_problem=anchor_problem if require_anchor else None)

    def check_entry(self, entry: RegistryEntry,
                    trusted: Mapping[str, Ed25519PublicKey] | None = None) -> RowCheck:
        """Every problem of one row, as :meth:`check` would report it."""
        keys, _ = _usable_issuer_keys(self.issuers(), trusted)
        return _row_check(entry, keys)


def _usable_issuer_keys(issuers: Sequence[Issuer], trusted: Mapping[str, Ed25519PublicKey] | None,
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


def _row_check(entry: RegistryEntry, keys: Mapping[str, Ed25519PublicKey]) -> RowCheck:
    problems, _, _ = _row_problems(entry, keys)
    return RowCheck(entry.provenance_id, tuple(message for _, message in problems))


def _row_problems(entry: RegistryEntry, keys: Mapping[str, Ed25519PublicKey],
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


def _entry(row: Sequence[Any]) -> RegistryEntry:
    (provenance_id, key_hex, bits, issuer_key_id, status, record, signature, revocation,
     revocation_signature, created_at) = row
    try:
        status_value = KeyStatus(status)
    except ValueError:
        raise RegistryError(f"registry row {provenance_id} has unknown status {status!r}") from None
    signed_revocation = None
    if revocation is not None:
        signed_revocation = SignedDocument(payload=_stored_bytes(revocation),
                                           signature=_signature_bytes(revocation_signature))
    signed_record = SignedDocument(payload=_stored_bytes(record), signature=_signature_bytes(signature))
    return RegistryEntry(provenance_id=provenance_id, key_hex=key_hex, bits=int(bits), issuer_key_id=issuer_key_id,
                         status=status_value, signed_record=signed_record, signed_revocation=signed_revocation,
                         created_at=created_at)


def _stored_bytes(text: str) -> bytes:
    """The stored JSON text as bytes. Canonical JSON is ASCII; anything else fails verify(), as it should."""
    return text.encode("utf-8")


def _signature_bytes(text: str | None) -> bytes:
    """Stored base64 signature; damaged text becomes an empty signature, which verify() reports as malformed."""
    try:
        return from_base64(text or "", "signature")
    except InputError:
        return b""


def _hex_matrix(hexes: Sequence[str], bits: int) -> np.ndarray:
    """(N, bits) key matrix of stored hex keys; a damaged key is a registry fault, not the caller's input."""
    try:
        return hex_matrix(hexes, bits)
    except InputError as error:
        raise RegistryError(f"the registry holds a damaged key ({error}); run `medsign keys check`") from None


def _draw_distant_key(existing: np.ndarray, bits: int, min_distance: int, rng: np.random.Generator) -> np.ndarray:
    """Rejection-sample a key at Hamming distance >= ``min_distance`` from every row of ``existing``."""
    for _ in range(MAX_KEY_DRAWS):
        key = random_key(bits, rng)
        if existing.shape[0] == 0 or bits - int(match_counts(key, existing).max()) >= min_distance:
            return key
    raise RegistryError(f"no {bits}-bit key at distance >= {min_distance} from the {existing.shape[0]} "
                        f"registered keys was found in {MAX_KEY_DRAWS} draws; the key space is crowded: use "
                        "longer keys or a policy with a smaller keys.min_hamming_distance")

