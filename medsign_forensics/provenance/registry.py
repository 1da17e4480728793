"""The key registry: which k-bit keys belong to which deployment, under whose signature.

The database layout and its migrations are in :mod:`medsign_forensics.provenance.schema`. The key, length,
issuer and time columns repeat fields of the signed record so that SQL can index them; :meth:`Registry.check`
proves they agree with the signed bytes, so editing a column is as detectable as editing the record. An
attacker who can write the file and also replaces an issuer's public key can re-sign everything; pin the issuer
keys you trust (``check(trusted=...)``, ``keys check --trust FILE``) to catch that.

Concurrency: WAL journal, ``synchronous=FULL``, a 30 s busy timeout, every write inside ``BEGIN IMMEDIATE``
(the write lock is taken before anything is read) with a bounded retry on SQLITE_BUSY. The minimum-distance
check of :meth:`Registry.issue` reads the existing keys inside that same transaction, so two processes can
never both insert keys that are too close to each other.

The ``keys`` table stays the lookup view; :meth:`Registry.check` proves it equals the append-only log. A
version-1 file is NOT upgraded when it is opened (opening must not write: ``medsign verify`` opens the shipped
demo registry read-only in spirit); it reads as before and :meth:`check` warns that it has no log. It is
upgraded by :meth:`Registry.migrate` (``medsign keys migrate``), which builds the log from the rows' own signed
records and revocations (each verified first) and, given the issuer key, signs a first checkpoint; or
implicitly by the first :meth:`issue`/:meth:`revoke`, whose checkpoint then covers the migrated entries too.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medsign_forensics.config import DEFAULT_KEY_BITS
from medsign_forensics.errors import RegistryError
from medsign_forensics.key import bits_to_hex, check_length, draw_distant_key
from medsign_forensics.provenance.canonical import to_base64
from medsign_forensics.provenance.checks import CheckReport, RowCheck, row_check, row_problems, usable_issuer_keys
from medsign_forensics.provenance.entries import (
    Candidates,
    Issuer,
    KeyStatus,
    RegistryEntry,
    VerifiedEntry,
    entry_from_row,
    key_matrix,
)
from medsign_forensics.provenance.keys import IssuerKey, Signer, key_id_of, public_key_pem
from medsign_forensics.provenance.layers import BINDING_SECRET_BYTES, insert_binding
from medsign_forensics.provenance.log import CheckpointPin, EntryKind, LogEntry, StoredCheckpoint, audit
from medsign_forensics.provenance.log_tables import (
    append_entry,
    build_log,
    latest_checkpoint,
    log_head,
    read_checkpoints,
    read_log,
    write_checkpoint,
)
from medsign_forensics.provenance.policy import Policy
from medsign_forensics.provenance.records import (
    ModelInfo,
    ProvenanceRecord,
    Revocation,
    SignatureError,
    SignedDocument,
    WatermarkPayload,
    new_provenance_id,
    sign,
    utc_now,
)
from medsign_forensics.provenance.schema import (
    KEY_COLUMNS,
    LOG_SCHEMA_VERSION,
    MIGRATIONS,
    REGISTRY_FILE,
    SCHEMA_VERSION,
    MigrationResult,
)

BUSY_TIMEOUT_S = 30.0
WRITE_ATTEMPTS = 8
T = TypeVar("T")


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
                build_log(db, self.folder)
            db.execute(f"PRAGMA user_version = {target}")

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
        return usable_issuer_keys(self.issuers(), None)[0]

    # -- issuing and revoking ----------------------------------------------------------------------------

    def issue(self, issuer: IssuerKey, *, model: ModelInfo, deployment: str, policy: Policy,
              bits: int | None = None, rng: np.random.Generator | None = None) -> RegistryEntry:
        """Draw a new key at least ``policy.min_hamming_distance`` bits from every registered key of the same
        length (active or revoked: old images still carry revoked keys), give it a fresh provenance ID, sign
        the record with ``issuer`` and store it with a fresh content-binding secret (:mod:`.layers`), all in
        one write transaction.
        """
        bits = policy.key_bits if bits is None else bits
        check_length(bits)
        rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))

        def body(db: sqlite3.Connection) -> RegistryEntry:
            self._migrate(db)  # a version-1 file gets its log first, in this same transaction
            self._add_issuer(db, issuer.public_key, issuer.name)
            existing = key_matrix([row[0] for row in db.execute("SELECT key_hex FROM keys WHERE bits = ?",
                                                                 (bits,))], bits)
            key = draw_distant_key(existing, bits, policy.min_hamming_distance, rng)
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
            append_entry(db, EntryKind.ISSUE, provenance_id, signed)
            insert_binding(db, provenance_id, secrets.token_bytes(BINDING_SECRET_BYTES))
            write_checkpoint(db, issuer)
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
            append_entry(db, EntryKind.REVOKE, entry.provenance_id, signed)
            write_checkpoint(db, issuer)
            return self._get(db, entry.provenance_id)

        return self._write(body)

    # -- the append-only log -----------------------------------------------------------------------------

    @property
    def has_log(self) -> bool:
        return self.schema_version >= LOG_SCHEMA_VERSION

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
                size, head = log_head(db)
                covered = db.execute("SELECT 1 FROM checkpoints WHERE log_size = ? AND head_hash = ? AND key_id = ?",
                                     (size, head, issuer.key_id)).fetchone()
                if covered is None:
                    signed = write_checkpoint(db, issuer)
            size, head = log_head(db)
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
            return write_checkpoint(db, issuer)

        return self._write(body)

    def log_entries(self) -> list[LogEntry]:
        """The log, oldest first (empty for a schema-1 registry)."""
        if not self.has_log:
            return []
        return read_log(self._db)

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, oldest first."""
        if not self.has_log:
            return []
        return read_checkpoints(self._db)

    def head(self) -> tuple[int, str]:
        """(log size, head hash) as stored; :meth:`check` proves they are right."""
        if not self.has_log:
            raise RegistryError("this registry has schema version 1 and no log; run `medsign keys migrate`",
                                path=self.folder)
        return log_head(self._db)

    def latest_checkpoint(self) -> SignedDocument | None:
        """The stored checkpoint covering the most entries (the newest among equals), or None."""
        return latest_checkpoint(self._db) if self.has_log else None

    # -- reading -----------------------------------------------------------------------------------------

    def get(self, identifier: str) -> RegistryEntry:
        """The row for a provenance ID or a full key in hex; RegistryError when there is none."""
        return self._get(self._db, identifier)

    def _get(self, db: sqlite3.Connection, identifier: str) -> RegistryEntry:
        identifier = identifier.strip().lower()
        row = db.execute(f"SELECT {KEY_COLUMNS} FROM keys WHERE provenance_id = ? OR key_hex = ?",
                         (identifier, identifier)).fetchone()
        if row is None:
            raise RegistryError(f"no deployment with provenance ID or key {identifier!r} in this registry; "
                                "see `medsign keys list`", path=self.folder)
        return entry_from_row(row)

    def entries(self, *, status: KeyStatus | None = None) -> list[RegistryEntry]:
        """All rows (optionally of one status), oldest first."""
        query = f"SELECT {KEY_COLUMNS} FROM keys"
        params: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status.value,)
        return [entry_from_row(row) for row in self._db.execute(query + " ORDER BY created_at, rowid", params)]

    def lookup(self, bits: int = DEFAULT_KEY_BITS) -> Candidates:
        """Every active and revoked key of length ``bits``, ready for :meth:`Candidates.match_counts`."""
        check_length(bits)
        rows = self._db.execute(f"SELECT {KEY_COLUMNS} FROM keys WHERE bits = ? ORDER BY rowid", (bits,))
        entries = tuple(entry_from_row(row) for row in rows)
        return Candidates(bits=bits, entries=entries, keys=key_matrix([e.key_hex for e in entries], bits))

    def verify_entry(self, entry: RegistryEntry,
                     trusted: Mapping[str, Ed25519PublicKey] | None = None) -> VerifiedEntry:
        """Check one row's signatures and column consistency; raise :class:`SignatureError` on the first fault.

        ``trusted`` (key id -> public key) pins the issuer keys; by default the registry's own are used.
        """
        keys = self.public_keys() if trusted is None else dict(trusted)
        problems, record, revocation = row_problems(entry, keys)
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
        keys, issuer_problems = usable_issuer_keys(issuers, trusted)
        entries = self.entries()
        rows = tuple(row_check(entry, keys) for entry in entries)
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
        keys, _ = usable_issuer_keys(self.issuers(), trusted)
        return row_check(entry, keys)
