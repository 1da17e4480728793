from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from helpers.provenance import FAST_SCRYPT, PASSPHRASE

from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.provenance.keys import (
    IssuerKey,
    ScryptParams,
    create_issuer_key,
    key_id_of,
    load_issuer_key,
    load_public_key_pem,
    passphrase_from_env,
    read_issuer_key_info,
)


def test_round_trip_keeps_the_key_and_the_file_is_private(issuer_file: Path) -> None:
    key = load_issuer_key(issuer_file, PASSPHRASE)
    assert stat.S_IMODE(issuer_file.stat().st_mode) == 0o600
    assert key.name == "Test Issuer"
    signature = key.sign(b"message")
    key.public_key.verify(signature, b"message")  # raises if the pair does not match
    assert not list(issuer_file.parent.glob(".*.tmp"))


def test_default_scrypt_cost_is_strong_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "strong.key"
    created = create_issuer_key(path, PASSPHRASE, name="Strong")
    kdf = json.loads(path.read_text())["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 2**17, 8, 1)
    assert load_issuer_key(path, PASSPHRASE).key_id == created.key_id


def test_file_holds_no_plaintext_private_key(issuer_file: Path) -> None:
    key = load_issuer_key(issuer_file, PASSPHRASE)
    raw = key._private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
    text = issuer_file.read_bytes()
    assert raw not in text and raw.hex().encode() not in text and base64.b64encode(raw) not in text


def test_key_id_is_sha256_of_der_public_key(issuer: IssuerKey) -> None:
    der = issuer.public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert issuer.key_id == hashlib.sha256(der).hexdigest() == key_id_of(issuer.public_key)
    assert key_id_of(load_public_key_pem(issuer.public_key_pem())) == issuer.key_id
    assert issuer.key_id[:16] in repr(issuer) and "PRIVATE" not in repr(issuer)


def test_wrong_passphrase_is_a_clear_registry_error(issuer_file: Path) -> None:
    with pytest.raises(RegistryError, match="wrong passphrase") as caught:
        load_issuer_key(issuer_file, "not the passphrase")
    assert str(issuer_file) in str(caught.value)


def test_edited_header_fails_like_a_wrong_passphrase(issuer_file: Path) -> None:
    document = json.loads(issuer_file.read_text())
    document["name"] = "Mallory"
    issuer_file.write_text(json.dumps(document))
    with pytest.raises(RegistryError, match="wrong passphrase .*altered"):
        load_issuer_key(issuer_file, PASSPHRASE)


def test_readable_by_others_is_refused(issuer_file: Path) -> None:
    os.chmod(issuer_file, 0o644)
    with pytest.raises(RegistryError, match="chmod 600"):
        load_issuer_key(issuer_file, PASSPHRASE)


def test_missing_and_foreign_files_are_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        load_issuer_key(tmp_path / "absent.key", PASSPHRASE)
    other = tmp_path / "other.key"
    other.write_text('{"hello": 1}')
    with pytest.raises(RegistryError, match="not a medsign issuer key file"):
        read_issuer_key_info(other)


def test_existing_key_is_never_overwritten(issuer_file: Path) -> None:
    before = issuer_file.read_bytes()
    with pytest.raises(RegistryError, match="refusing to overwrite"):
        create_issuer_key(issuer_file, PASSPHRASE, name="Again", scrypt=FAST_SCRYPT)
    assert issuer_file.read_bytes() == before


def test_weak_passphrase_and_weak_kdf_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 8"):
        create_issuer_key(tmp_path / "k", "short", name="X", scrypt=FAST_SCRYPT)
    with pytest.raises(InputError, match="power of two"):
        ScryptParams(n=1024)


def test_header_is_readable_without_passphrase(issuer_file: Path) -> None:
    info = read_issuer_key_info(issuer_file)
    assert info.key_id == load_issuer_key(issuer_file, PASSPHRASE).key_id
    assert "BEGIN PUBLIC KEY" in info.public_key_pem


def test_passphrase_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSIGN_PASSPHRASE", "from the environment")
    assert passphrase_from_env() == "from the environment"
    monkeypatch.setenv("MEDSIGN_PASSPHRASE", "")
    assert passphrase_from_env() is None


def test_non_ed25519_public_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(RegistryError, match="not Ed25519"):
        load_public_key_pem(pem)
    with pytest.raises(RegistryError, match="not a PEM public key"):
        load_public_key_pem("garbage")


def test_a_missing_key_folder_is_created_private(tmp_path: Path) -> None:
    target = tmp_path / "home" / "medsign" / "issuer.key"
    create_issuer_key(target, PASSPHRASE, name="New Issuer", scrypt=FAST_SCRYPT)
    assert load_issuer_key(target, PASSPHRASE).name == "New Issuer"
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
