"""The repository's keys/ folder: a demo registry and the demo issuers' public keys, nothing private."""

from __future__ import annotations

from medsign_forensics.config import REPO_DIR
from medsign_forensics.provenance import Registry, key_id_of, load_public_key_file
from medsign_forensics.provenance.log import parse_pin

KEYS = REPO_DIR / "keys"
# Entries 1-5 (3 issues and 2 revocations by demo issuer 1) were migrated to the log without that issuer's private
# key; entry 6 is the mini-cxr 0.2.0 key, issued by demo issuer 2, whose checkpoint anchors the whole log. The
# first head is the pin auditors held before: an append-only log still passes it.
OLD_HEAD = "5:a931d8366be1c9b5a355948edd03cf8ee5cce37db81cea211b57743d5ae6d2d8"
DEMO_HEAD = "6:b2252d6cace848599c9ab1631285f0fa1be8a97151db2349b75da00d90e7b784"
ISSUER_FILES = ("demo-issuer.pub.pem", "demo-issuer-2.pub.pem")


def test_demo_registry_is_clean_under_the_pinned_demo_issuer_keys_and_heads() -> None:
    issuer_1, issuer_2 = (load_public_key_file(KEYS / name) for name in ISSUER_FILES)
    trusted = {key_id_of(key): key for key in (issuer_1, issuer_2)}
    readme = (KEYS / "README.md").read_text()
    assert all(key_id in readme for key_id in trusted)
    with Registry.open(KEYS / "demo-registry") as registry:
        assert sorted(issuer.key_id for issuer in registry.issuers()) == sorted(trusted)
        assert registry.schema_version == 2 and registry.latest_checkpoint() is not None
        for pin in (OLD_HEAD, DEMO_HEAD):
            pinned = registry.check(trusted, pin=parse_pin(pin))
            assert pinned.ok and pinned.anchored, pinned.to_dict()
        assert registry.check(trusted).ok  # the checkpoint anchors it without a pin
        # issuer 2's entry is refused when only issuer 1 is trusted
        assert not registry.check({key_id_of(issuer_1): issuer_1}).ok


def test_no_private_key_material_in_the_repository_keys_folder() -> None:
    for path in KEYS.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data, path
            assert b"medsign-issuer-key" not in data and b"ciphertext" not in data, path
