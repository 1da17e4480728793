"""The registry's append-only log: hash-chained entries and issuer-signed checkpoints.

Certificate Transparency and Rekor were the model (learned from, not copied): every change to the registry —
each issue and each revocation — is appended to a log whose entries are chained by hash, and the issuer signs
checkpoints (log size + head hash). The ``keys`` table is only the fast lookup view; ``keys check`` replays the
log and demands that the view agrees with it.

Entry hash (lower-case hex SHA-256) of entry ``i``::

    SHA-256( canonical_json({"type": "medsign.log-entry", "version": 1, "index": i,
                             "prev_hash": <hash of entry i-1, or 64 zeros for entry 0>,
                             "document": <the signed record or revocation, its canonical JSON text>,
                             "signature": <its Ed25519 signature, base64>}) )

The head hash of a log of size ``n`` is the hash of entry ``n - 1`` (64 zeros when empty). A checkpoint is
a signed :class:`~medsign_forensics.provenance.records.Checkpoint` document (canonical JSON, Ed25519, like
every other signed document), written in the same transaction as the entry it covers.

What the log proves, and to whom:

* anyone: the chain is intact, every entry is signed by a registry issuer, and the view equals the log, so an
  ``UPDATE``/``DELETE`` on the ``keys`` table alone (un-revoking, deleting, editing key bits) is reported;
* with the latest signed checkpoint: deleting, reordering or rewriting covered entries is reported, because the
  attacker cannot sign a new checkpoint without the issuer's private key;
* with a pin (``--checkpoint HASH`` or ``--checkpoint-file FILE`` kept by an auditor): a rollback to an older
  copy, or an issuer key swap followed by re-signing everything, is reported too. Without a pin, a whole older
  copy of the database is internally consistent and cannot be told from the current one — the same limit as
  any log that is not gossiped.

Checkpoint file (``medsign keys checkpoint --out FILE``), JSON::

    {"format": "medsign-checkpoint", "version": 1, "checkpoint": <canonical JSON text>,
     "signature": <base64>, "public_key_pem": <PEM of the signing issuer key>}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medsign_forensics.errors import InputError
from medsign_forensics.provenance.canonical import canonical_json, from_base64, sha256_hex, to_base64
from medsign_forensics.provenance.entries import RegistryEntry
from medsign_forensics.provenance.keys import key_id_of, load_public_key_pem
from medsign_forensics.provenance.records import (
    Checkpoint,
    ProvenanceRecord,
    Revocation,
    SignatureError,
    SignedDocument,
    verify,
)

GENESIS_HASH = "0" * 64
ENTRY_TYPE = "medsign.log-entry"
ENTRY_VERSION = 1
CHECKPOINT_FILE_FORMAT = "medsign-checkpoint"
CHECKPOINT_FILE_VERSION = 1
_HASH = re.compile(r"^[0-9a-f]{64}$")


class EntryKind(str, Enum):
    ISSUE = "issue"
    REVOKE = "revoke"


def entry_hash(index: int, prev_hash: str, document: str, signature: str) -> str:
    """The hash of one log entry (see the module docstring); ``signature`` is the stored base64 text."""
    return sha256_hex(canonical_json({"type": ENTRY_TYPE, "version": ENTRY_VERSION, "index": index,
                                      "prev_hash": prev_hash, "document": document, "signature": signature}))


def _signed(document: str, signature: str | None) -> SignedDocument:
    try:
        raw = from_base64(signature or "", "signature")
    except InputError:
        raw = b""
    return SignedDocument(payload=document.encode("utf-8"), signature=raw)


@dataclass(frozen=True)
class LogEntry:
    """One stored log row, exactly as held (verify with :func:`audit`)."""

    index: int
    kind: str
    provenance_id: str
    document: str
    signature: str
    prev_hash: str
    entry_hash: str

    @property
    def signed(self) -> SignedDocument:
        return _signed(self.document, self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "provenance_id": self.provenance_id,
                "document": self.document, "signature": self.signature, "prev_hash": self.prev_hash,
                "entry_hash": self.entry_hash}


@dataclass(frozen=True)
class StoredCheckpoint:
    """One stored checkpoint row."""

    id: int
    log_size: int
    head_hash: str
    key_id: str
    document: str
    signature: str

    @property
    def signed(self) -> SignedDocument:
        return _signed(self.document, self.signature)


@dataclass(frozen=True)
class CheckpointPin:
    """What an auditor pinned: a head hash, with the log size and signing key when known (from a file)."""

    head_hash: str
    log_size: int | None = None
    key_id: str | None = None
    source: str = "--checkpoint"

    def to_dict(self) -> dict[str, Any]:
        return {"head_hash": self.head_hash, "log_size": self.log_size, "key_id": self.key_id,
                "source": self.source}


def parse_pin(text: str) -> CheckpointPin:
    """``HASH`` (a head hash) or ``SIZE:HASH``; InputError otherwise."""
    text = text.strip().lower()
    size: int | None = None
    if ":" in text:
        size_text, text = text.split(":", 1)
        if not size_text.isdigit():
            raise InputError(f"--checkpoint takes a head hash or SIZE:HASH; {size_text!r} is not a log size")
        size = int(size_text)
    if not _HASH.match(text):
        raise InputError("--checkpoint takes a head hash (64 hex digits, from `medsign keys checkpoint`) "
                         "or SIZE:HASH")
    return CheckpointPin(head_hash=text, log_size=size)


def checkpoint_file_bytes(signed: SignedDocument, public_key_pem: str) -> bytes:
    """The checkpoint file for ``signed`` (signed by the key in ``public_key_pem``)."""
    document = {"format": CHECKPOINT_FILE_FORMAT, "version": CHECKPOINT_FILE_VERSION,
                "checkpoint": signed.text, "signature": to_base64(signed.signature),
                "public_key_pem": public_key_pem}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("ascii")


def load_checkpoint_file(path: str | Path) -> tuple[CheckpointPin, Checkpoint]:
    """Read and verify a checkpoint file: its signature must check under the public key it carries."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("checkpoint file not found", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not a readable checkpoint file ({error})", path=path) from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FILE_FORMAT:
        raise InputError("not a medsign checkpoint file (expected the output of `medsign keys checkpoint --out`)",
                         path=path)
    if document.get("version") != CHECKPOINT_FILE_VERSION:
        raise InputError(f"unsupported checkpoint file version {document.get('version')!r}", path=path)
    try:
        public_key = load_public_key_pem(str(document["public_key_pem"]), source=path)
        signed = SignedDocument(payload=str(document["checkpoint"]).encode("utf-8"),
                                signature=from_base64(str(document["signature"]), "checkpoint signature"))
    except KeyError as error:
        raise InputError(f"the checkpoint file lacks the field {error}", path=path) from None
    except Exception as error:  # RegistryError / InputError from the loaders: one line, naming the file
        raise InputError(f"the checkpoint file is damaged: {error}", path=path) from None
    try:
        checkpoint = verify(signed, {key_id_of(public_key): public_key}, Checkpoint)
    except SignatureError as error:
        raise InputError(f"the pinned checkpoint does not verify: {error}", path=path) from None
    pin = CheckpointPin(head_hash=checkpoint.head_hash, log_size=checkpoint.log_size, key_id=checkpoint.key_id,
                        source=str(path))
    return pin, checkpoint


@dataclass(frozen=True)
class LogState:
    """The log as :func:`audit` found it."""

    size: int
    head_hash: str
    checkpoints: int
    checkpoint_size: int | None  # size covered by the latest valid signed checkpoint
    checkpoint_key_id: str | None
    anchored: bool  # a valid signed checkpoint covers the whole log, or a pin was satisfied
    pin: CheckpointPin | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "head_hash": self.head_hash, "checkpoints": self.checkpoints,
                "checkpoint_size": self.checkpoint_size, "checkpoint_key_id": self.checkpoint_key_id,
                "anchored": self.anchored, "pin": None if self.pin is None else self.pin.to_dict()}


@dataclass
class _Deployment:
    index: int
    signed_record: SignedDocument
    record: ProvenanceRecord | None
    revoked_at_index: int | None = None
    signed_revocation: SignedDocument | None = None


@dataclass
class AuditResult:
    problems: list[str] = field(default_factory=list)
    anchor_problem: str | None = None  # nothing signed or pinned vouches for a non-empty log's head
    state: LogState | None = None


class ChainEntry(Protocol):
    """What the hash chain covers of a log row (a :class:`LogEntry`, or a row being rewritten)."""

    @property
    def document(self) -> str: ...

    @property
    def signature(self) -> str: ...


def chain_heads(entries: Sequence[ChainEntry]) -> list[str]:
    """Head hash after 0, 1, ..., n entries, recomputed from the entries' content (stored hashes ignored)."""
    heads = [GENESIS_HASH]
    for position, entry in enumerate(entries):
        heads.append(entry_hash(position, heads[-1], entry.document, entry.signature))
    return heads


def audit(entries: Sequence[LogEntry], checkpoints: Sequence[StoredCheckpoint], rows: Iterable[RegistryEntry],
          keys: Mapping[str, Ed25519PublicKey], *, registry_key_ids: Iterable[str],
          trusted_ids: Iterable[str] | None = None, pin: CheckpointPin | None = None) -> AuditResult:
    """Verify the chain, every entry's signature, the checkpoints, an optional pin and the keys view.

    ``keys`` are the usable (and, when pinned, trusted) issuer keys. Problems come most specific first, so
    ``problems[0]`` is the one-line reason.
    """
    result = AuditResult()
    heads = chain_heads(entries)
    size, head = len(entries), heads[-1]

    # 1. the chain itself: positions, links and stored hashes
    for position, entry in enumerate(entries):
        where = f"log entry {position} ({entry.kind} {entry.provenance_id})"
        if entry.index != position:
            result.problems.append(f"log entry {position} is missing (the next stored entry is {entry.index}): "
                                   "an entry was deleted from the log")
            break
        if entry.prev_hash != heads[position]:
            result.problems.append(f"{where} does not link to entry {position - 1}: the log was reordered, or an "
                                   "entry before it was edited or deleted" if position else
                                   f"{where} does not start the chain: entries were deleted or reordered")
            break
        if entry.entry_hash != heads[position + 1]:
            result.problems.append(f"{where}: its stored hash does not match its content: the entry was edited")
            break

    # 2. the pin, if any
    registry_key_ids = set(registry_key_ids)
    pin_ok = False
    if pin is not None:
        pin_problems: list[str] = []
        if pin.key_id is not None and pin.key_id not in registry_key_ids:
            pin_problems.append(f"issuer key swapped: the pinned checkpoint was signed by issuer key "
                                f"{pin.key_id[:16]}..., which this registry no longer holds")
        elif pin.key_id is not None and trusted_ids is not None and pin.key_id not in set(trusted_ids):
            pin_problems.append(f"the pinned checkpoint was signed by key {pin.key_id[:16]}..., which is not among "
                                "the trusted public keys")
        if pin.log_size is not None:
            if pin.log_size > size:
                pin_problems.append(f"rolled back: the log has {size} entries, fewer than the {pin.log_size} of the "
                                    "pinned checkpoint (entries were deleted or an older copy was restored)")
            elif heads[pin.log_size] != pin.head_hash:
                pin_problems.append(f"history rewritten: the log's head at the pinned size {pin.log_size} is "
                                    f"{heads[pin.log_size][:16]}..., not the pinned {pin.head_hash[:16]}... (an "
                                    "entry it covers was edited, reordered, deleted or replaced)")
        elif pin.head_hash not in heads:
            pin_problems.append(f"the pinned head {pin.head_hash[:16]}... is not in this log ({size} entries, head "
                                f"{head[:16]}...): history was rewritten or rolled back")
        result.problems.extend(pin_problems)
        pin_ok = not pin_problems

    # 3. every entry: signed by a usable issuer key, and a sensible sequence (issue once, revoke after issue)
    deployments: dict[str, _Deployment] = {}
    for position, entry in enumerate(entries):
        where = f"log entry {position} ({entry.kind} {entry.provenance_id})"
        if entry.kind == EntryKind.ISSUE.value:
            record = None
            try:
                record = verify(entry.signed, keys, ProvenanceRecord)
            except SignatureError as error:
                result.problems.append(f"{where}: {error}")
            else:
                if record.provenance_id != entry.provenance_id:
                    result.problems.append(f"{where}: the signed record is for {record.provenance_id}")
            if entry.provenance_id in deployments:
                result.problems.append(f"{where} issues {entry.provenance_id} a second time (first issued by log "
                                       f"entry {deployments[entry.provenance_id].index})")
                continue
            deployments[entry.provenance_id] = _Deployment(position, entry.signed, record)
        elif entry.kind == EntryKind.REVOKE.value:
            issued = deployments.get(entry.provenance_id)
            if issued is None:
                result.problems.append(f"{where} revokes {entry.provenance_id} before any entry issued it: the log "
                                       "was reordered or the issue entry deleted")
                continue
            if issued.revoked_at_index is not None:
                result.problems.append(f"{where} revokes {entry.provenance_id} a second time (already by log entry "
                                       f"{issued.revoked_at_index})")
                continue
            own = {} if issued.record is None or issued.record.key_id not in keys else {
                issued.record.key_id: keys[issued.record.key_id]}
            try:
                revocation = verify(entry.signed, own, Revocation)
            except SignatureError as error:
                result.problems.append(f"{where}: {error}")
            else:
                if revocation.provenance_id != entry.provenance_id or \
                        revocation.record_sha256 != issued.signed_record.sha256:
                    result.problems.append(f"{where}: the revocation belongs to another record")
            issued.revoked_at_index = position
            issued.signed_revocation = entry.signed
        else:
            result.problems.append(f"{where}: unknown entry kind {entry.kind!r}")

    # 4. checkpoints: signed by a usable issuer, consistent with the log
    latest: StoredCheckpoint | None = None
    for stored in checkpoints:
        where = f"checkpoint {stored.id} (log size {stored.log_size})"
        try:
            checkpoint = verify(stored.signed, keys, Checkpoint)
        except SignatureError as error:
            result.problems.append(f"{where}: {error}")
            continue
        if (checkpoint.log_size, checkpoint.head_hash, checkpoint.key_id) != \
                (stored.log_size, stored.head_hash, stored.key_id):
            result.problems.append(f"{where}: its columns differ from the signed checkpoint")
            continue
        if checkpoint.log_size > size:
            result.problems.append(f"the log has {size} entries but a signed checkpoint covers "
                                   f"{checkpoint.log_size}: entries were deleted or the log was rolled back")
            continue
        if heads[checkpoint.log_size] != checkpoint.head_hash:
            result.problems.append(f"the log's head at size {checkpoint.log_size} is "
                                   f"{heads[checkpoint.log_size][:16]}... but the signed checkpoint says "
                                   f"{checkpoint.head_hash[:16]}...: entries it covers were edited, reordered, "
                                   "deleted or replaced")
            continue
        if latest is None or stored.log_size >= latest.log_size:
            latest = stored
    if latest is not None and latest.log_size < size:
        result.problems.append(
            f"only {latest.log_size} of the log's {size} entries are covered by a signed checkpoint: "
            "later checkpoints were deleted and the log rewritten, or entries were appended "
            "outside the registry software"
        )
    if latest is None and not checkpoints and size > 0 and not (pin is not None and pin_ok):
        result.anchor_problem = (
            f"no signed checkpoint: the log's {size} entries chain and are signed, but no issuer signature vouches "
            f"for its head, so a rewrite of the whole log cannot be detected; pin it with `keys check --checkpoint "
            f"{size}:{head}` or have the issuer sign one with `medsign keys checkpoint --issuer-key KEY`")

    # 5. the keys view must be exactly what the log says
    seen: set[str] = set()
    for row in rows:
        seen.add(row.provenance_id)
        logged = deployments.get(row.provenance_id)
        where = f"keys view: {row.provenance_id}"
        if logged is None:
            result.problems.append(f"{where} has no issue entry in the log: the row was inserted outside the log")
            continue
        if (row.signed_record.payload, row.signed_record.signature) != \
                (logged.signed_record.payload, logged.signed_record.signature):
            result.problems.append(f"{where}: its signed record differs from log entry {logged.index}'s: the row was "
                                   "edited")
        if logged.record is not None:
            signed_bits = logged.record.watermark
            if (row.key_hex, row.bits) != (signed_bits.key_hex, signed_bits.bits):
                result.problems.append(f"{where} has key {row.key_hex!r} ({row.bits} bits) but log entry "
                                       f"{logged.index}'s signed record says {signed_bits.key_hex!r} "
                                       f"({signed_bits.bits} bits): the key bits were edited")
            if row.issuer_key_id != logged.record.key_id:
                result.problems.append(f"{where}: issuer key id differs from log entry {logged.index}'s record")
        if logged.revoked_at_index is not None:
            if row.status.value != "revoked":
                result.problems.append(f"{where} is {row.status.value} but log entry {logged.revoked_at_index} "
                                       "revoked it: it was un-revoked")
            elif row.signed_revocation is None or logged.signed_revocation is None or \
                    (row.signed_revocation.payload, row.signed_revocation.signature) != \
                    (logged.signed_revocation.payload, logged.signed_revocation.signature):
                result.problems.append(f"{where}: its revocation differs from log entry {logged.revoked_at_index}'s")
        elif row.status.value != "active" or row.signed_revocation is not None:
            result.problems.append(f"{where} is {row.status.value} but the log holds no revocation for it")
    for provenance_id, logged in deployments.items():
        if provenance_id not in seen:
            result.problems.append(f"keys view has no row for {provenance_id} (issued by log entry {logged.index}): "
                                   "the row was deleted")

    anchored = (latest is not None and latest.log_size == size and not result.problems) or \
        (pin is not None and pin_ok)
    result.state = LogState(size=size, head_hash=head, checkpoints=len(checkpoints),
                            checkpoint_size=None if latest is None else latest.log_size,
                            checkpoint_key_id=None if latest is None else latest.key_id,
                            anchored=anchored, pin=pin)
    return result

