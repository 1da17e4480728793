"""The repository's keys/ folder: a demo registry and the demo issuer's public key, nothing private."""

from __future__ import annotations

from medsign_forensics.config import REPO_DIR
from medsign_forensics.provenance import Registry, key_id_of, load_public_key_file

KEYS = REPO_DIR / "keys"


def test_demo_registry_is_clean_under_the_pinned_demo_issuer_key() -> None:
    public_key = load_public_key_file(KEYS / "demo-issuer.pub.pem")
    key_id = key_id_of(public_key)
    assert key_id in (KEYS / "README.md").read_text()
    with Registry.open(KEYS / "demo-registry") as registry:
        assert [issuer.key_id for issuer in registry.issuers()] == [key_id]
        assert registry.check({key_id: public_key}).ok


def test_no_private_key_material_in_the_repository_keys_folder() -> None:
    for path in KEYS.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data, path
            assert b"medsign-issuer-key" not in data and b"ciphertext" not in data, path
