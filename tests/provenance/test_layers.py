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
