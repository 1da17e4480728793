"""Per-deployment secrets the registry holds for verification: the latent layer's keystream secret, settings and
base model (table ``latent_layers``), and the decoder layer's content-binding secret (table
``spectral_bindings``, :mod:`medsign_forensics.watermark.binding`).

The secret is to the latent layer what the key bits are to both layers: whoever holds the registry to verify
reads it, and it never appears in logs, reports or JSON. It lives in its own table, ``latent_layers``, created
on first use, so registries without a latent layer are unchanged. One row per provenance ID, never updated
(a trigger refuses UPDATE and DELETE): a deployment's secret is fixed for the life of its key.

Why the row is not in the signed, hash-chained log: a secret cannot be published in a log that auditors copy,
and the row proves nothing on its own. Editing it cannot make an unmarked image match a key (the key bits and
their signed record are checked as before; a forged secret yields fair-coin bits for every image not made with
it), it can only make the latent layer stop attributing: that is denial, which `keys check` does not detect.
``base_weights_sha256`` names the diffusion model whose inversion reads the layer (the combined weights digest
of :func:`medsign_forensics.diffusion.loader.load_model`), since the record's model hash names the
watermarked weights instead.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medsign_forensics.errors import InputError, RegistryError

if TYPE_CHECKING:  # registry.py imports this module (issue stores the binding secret)
    from medsign_forensics.provenance.registry import Registry

TABLE = "latent_layers"
BINDING_TABLE = "spectral_bindings"
BINDING_SECRET_BYTES = 32


def _schema(table: str, columns: str) -> tuple[str, ...]:
    """A one-row-per-key table whose rows are fixed once added (triggers refuse UPDATE and DELETE)."""
    return (
        f"""CREATE TABLE IF NOT EXISTS {table} (
            provenance_id TEXT PRIMARY KEY REFERENCES keys(provenance_id),
            secret_hex TEXT NOT NULL, {columns} added_at TEXT NOT NULL)""",
        *(f"""CREATE TRIGGER IF NOT EXISTS {table}_fixed_{action.lower()} BEFORE {action} ON {table}
            BEGIN SELECT RAISE(ABORT, '{table} rows are fixed once added'); END""" for action in ("UPDATE", "DELETE")),
    )


_SCHEMA = _schema(TABLE, "config TEXT NOT NULL, base_weights_sha256 TEXT NOT NULL,")
_BINDING_SCHEMA = _schema(BINDING_TABLE, "")


@dataclass(frozen=True)
class LatentEntry:
    """One deployment's latent layer as the registry holds it."""

    provenance_id: str
    secret: bytes
    config: dict[str, Any]
    base_weights_sha256: str

    def __repr__(self) -> str:  # never show the secret
        return f"LatentEntry({self.provenance_id}, base {self.base_weights_sha256[:12]}...)"


def add_latent_layer(registry: Registry, provenance_id: str, *, secret: bytes, config: dict[str, Any],
                     base_weights_sha256: str) -> LatentEntry:
    """Record a latent layer for an issued key (RegistryError if it already has one or the ID is unknown)."""
    from medsign_forensics.provenance.records import utc_now

    entry = registry.get(provenance_id)
    if len(base_weights_sha256) != 64:
        raise InputError("base_weights_sha256 must be a 64-digit hex SHA-256")

    def body(db: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            db.execute(statement)
        if db.execute(f"SELECT 1 FROM {TABLE} WHERE provenance_id = ?", (entry.provenance_id,)).fetchone():
            raise RegistryError(f"{entry.provenance_id} already has a latent layer; a key keeps its secret for "
                                "life (issue a new key for a new secret)", path=registry.folder)
        db.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?)",
                   (entry.provenance_id, secret.hex(), json.dumps(config, sort_keys=True), base_weights_sha256,
                    utc_now()))

    registry._write(body)
    return LatentEntry(entry.provenance_id, bytes(secret), dict(config), base_weights_sha256)


def _has_table(registry: Registry, table: str) -> bool:
    return registry._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (table,)).fetchone() is not None


def insert_binding(db: sqlite3.Connection, provenance_id: str, secret: bytes, *, folder: Any = None) -> None:
    """Store a key's content-binding secret inside an open write transaction (``Registry.issue`` calls this, so
    every key issued gets one). RegistryError (naming the registry ``folder``) when the key already has one."""
    from medsign_forensics.provenance.records import utc_now

    if len(secret) != BINDING_SECRET_BYTES:
        raise InputError(f"a binding secret is {BINDING_SECRET_BYTES} bytes, got {len(secret)}")
    for statement in _BINDING_SCHEMA:
        db.execute(statement)
    if db.execute(f"SELECT 1 FROM {BINDING_TABLE} WHERE provenance_id = ?", (provenance_id,)).fetchone():
        raise RegistryError(f"{provenance_id} already has a binding secret; a key keeps it for life (issue a new "
                            "key for a new secret)", path=folder)
    db.execute(f"INSERT INTO {BINDING_TABLE} VALUES (?, ?, ?)", (provenance_id, secret.hex(), utc_now()))


def add_binding(registry: Registry, provenance_id: str, *, secret: bytes) -> None:
    """Give a key issued before content binding its secret (RegistryError if it has one or the ID is unknown).

    Same trust argument as the latent layer's: deleting or editing the row cannot make an image attribute
    (verify refuses to attribute a spectral match without a binding that holds), it can only deny."""
    entry = registry.get(provenance_id)
    registry._write(lambda db: insert_binding(db, entry.provenance_id, secret, folder=registry.folder))


def bindings(registry: Registry) -> dict[str, bytes]:
    """Every key's content-binding secret, by provenance ID (empty when the table does not exist)."""
    if not _has_table(registry, BINDING_TABLE):
        return {}
    try:
        return {pid: bytes.fromhex(secret_hex) for pid, secret_hex in
                registry._db.execute(f"SELECT provenance_id, secret_hex FROM {BINDING_TABLE}")}
    except ValueError as error:
        raise RegistryError(f"a binding secret is unreadable ({error})", path=registry.folder) from None


def latent_layers(registry: Registry) -> dict[str, LatentEntry]:
    """Every latent layer in the registry, by provenance ID (empty when the table does not exist)."""
    db = registry._db
    if not _has_table(registry, TABLE):
        return {}
    layers = {}
    for provenance_id, secret_hex, config, base in db.execute(
            f"SELECT provenance_id, secret_hex, config, base_weights_sha256 FROM {TABLE}"):
        try:
            layers[provenance_id] = LatentEntry(provenance_id, bytes.fromhex(secret_hex), json.loads(config), base)
        except (ValueError, TypeError) as error:
            raise RegistryError(f"the latent layer of {provenance_id} is unreadable ({error})",
                                path=registry.folder) from None
    return layers
