"""The repository's keys/ folder: a demo registry and the demo issuer's public key, nothing private."""

from __future__ import annotations

from medsign_forensics.config import REPO_DIR
from medsign_forensics.provenance import Registry, key_id_of, load_public_key_file
from medsign_forensics.provenance.log import parse_pin

KEYS = REPO_DIR / "keys"
# The demo registry was migrated to schema 2 with `medsign keys migrate` WITHOUT the demo issuer's private key
# (it is not in the repository): its log (3 issues, 2 revocations) is built from the rows' own signed records,
# but no checkpoint is signed. This head hash is the auditor's pin.
DEMO_HEAD = "5:a931d8366be1c9b5a355948edd03cf8ee5cce37db81cea211b57743d5ae6d2d8"


def test_demo_registry_is_clean_under_the_pinned_demo_issuer_key_and_head() -> None:
    public_key = load_public_key_file(KEYS / "demo-issuer.pub.pem")
    key_id = key_id_of(public_key)
    assert key_id in (KEYS / "README.md").read_text()
    with Registry.open(KEYS / "demo-registry") as registry:
        assert [issuer.key_id for issuer in registry.issuers()] == [key_id]
        assert registry.schema_version == 2 and registry.latest_checkpoint() is None
        pinned = registry.check({key_id: public_key}, pin=parse_pin(DEMO_HEAD))
        assert pinned.ok and pinned.anchored, pinned.to_dict()
        unpinned = registry.check({key_id: public_key})
        assert not unpinned.ok and not unpinned.tampered
        assert unpinned.reason is not None and unpinned.reason.startswith("no signed checkpoint")
        assert registry.check({key_id: public_key}, require_anchor=False).ok


def test_no_private_key_material_in_the_repository_keys_folder() -> None:
    for path in KEYS.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data, path
            assert b"medsign-issuer-key" not in data and b"ciphertext" not in data, path
