"""The registry's latent-layer table: one fixed secret per key, readable by verifiers, never shown."""

from __future__ import annotations

import sqlite3

import pytest

from medsign_forensics.errors import RegistryError
from medsign_forensics.provenance.layers import add_latent_layer, latent_layers
from medsign_forensics.provenance.records import ModelInfo

MODEL = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32)
BASE = "cd" * 32


def test_a_key_gets_one_latent_layer_for_life(registry, issuer, policy):
    assert latent_layers(registry) == {}  # no table yet: registries without the layer are unchanged
    entry = registry.issue(issuer, model=MODEL, deployment="site-a", policy=policy)
    other = registry.issue(issuer, model=MODEL, deployment="site-b", policy=policy)
    secret = bytes(range(32))
    added = add_latent_layer(registry, entry.provenance_id, secret=secret, config={"spatial_factor": 4},
                             base_weights_sha256=BASE)
    layers = latent_layers(registry)
    assert set(layers) == {entry.provenance_id} and layers[entry.provenance_id].secret == secret
    assert layers[entry.provenance_id].config == {"spatial_factor": 4} and other.provenance_id not in layers
    assert secret.hex() not in repr(added)
    with pytest.raises(RegistryError, match="already has a latent layer"):
        add_latent_layer(registry, entry.provenance_id, secret=bytes(32), config={}, base_weights_sha256=BASE)
    with pytest.raises(sqlite3.IntegrityError, match="fixed"):
        registry._db.execute("UPDATE latent_layers SET secret_hex = ?", ("00" * 32,))
    with pytest.raises(RegistryError):
        add_latent_layer(registry, "msp-unknown", secret=bytes(32), config={}, base_weights_sha256=BASE)
    assert registry.check().ok  # the extra table does not disturb the signed log


def test_every_issued_key_gets_its_own_binding_secret_fixed_for_life(registry, issuer, policy):
    from medsign_forensics.provenance.layers import add_binding, bindings

    first = registry.issue(issuer, model=MODEL, deployment="site-a", policy=policy)
    second = registry.issue(issuer, model=MODEL, deployment="site-b", policy=policy)
    secrets = bindings(registry)
    assert set(secrets) == {first.provenance_id, second.provenance_id}
    assert all(len(s) == 32 for s in secrets.values()) and len(set(secrets.values())) == 2
    with pytest.raises(RegistryError, match="already has a binding secret"):
        add_binding(registry, first.provenance_id, secret=bytes(32))
    for statement in ("UPDATE spectral_bindings SET secret_hex = '00'", "DELETE FROM spectral_bindings"):
        with pytest.raises(sqlite3.IntegrityError, match="fixed"):
            registry._db.execute(statement)
    assert registry.check().ok  # the secrets are not in the signed log, and do not disturb it


def test_a_key_from_before_binding_gets_one_on_request(registry, issuer, policy):
    from medsign_forensics.errors import InputError
    from medsign_forensics.provenance.layers import add_binding, bindings

    entry = registry.issue(issuer, model=MODEL, deployment="site-a", policy=policy)
    registry._db.execute("DROP TABLE spectral_bindings")  # as a registry written before content binding
    assert bindings(registry) == {}
    with pytest.raises(InputError, match="32 bytes"):
        add_binding(registry, entry.provenance_id, secret=b"short")
    add_binding(registry, entry.provenance_id, secret=bytes(range(32)))
    assert bindings(registry) == {entry.provenance_id: bytes(range(32))}
    with pytest.raises(RegistryError):
        add_binding(registry, "msp-unknown", secret=bytes(32))
