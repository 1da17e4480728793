"""Issuer keys: Ed25519 signing keys, encrypted at rest, and the public keys that verification needs.

An issuer is whoever vouches for deployments (the model provider). Its private key signs provenance records
and per-image statements; anyone holding its public key can check them. Verification never needs the
private key.

Key file format (JSON, written with mode 0600 through a temporary file and a rename)::

    {"format": "medsign-issuer-key", "version": 1, "name": ..., "algorithm": "Ed25519",
     "key_id": <hex SHA-256 of the DER SubjectPublicKeyInfo>, "public_key": <PEM>,
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "length": 32, "salt": <base64, 16 bytes>},
     "cipher": {"name": "AES-256-GCM", "nonce": <base64, 12 bytes>},
     "ciphertext": <base64 of the 32-byte Ed25519 private key, encrypted, with the 16-byte tag>}

The passphrase goes through scrypt (N = 2**17, r = 8, p = 1: 128 MiB of memory and about a second per try,
the OWASP recommendation for scrypt) to a 256-bit AES-GCM key. Every field except the ciphertext is
authenticated as AES-GCM associated data (canonical JSON), so editing the name, the public key or the KDF
parameters makes decryption fail just like a wrong passphrase. PKCS#8 passphrase encryption was not used: as
implemented it derives its key with PBKDF2 and a small iteration count.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.fileio import write_atomic
from medsign_forensics.provenance.canonical import canonical_json, from_base64, sha256_hex, to_base64

PASSPHRASE_ENV = "MEDSIGN_PASSPHRASE"
KEY_FILE_FORMAT = "medsign-issuer-key"
KEY_FILE_VERSION = 1
SIGNATURE_ALGORITHM = "Ed25519"
MIN_PASSPHRASE_CHARS = 8
MIN_SCRYPT_N = 2**14
_SALT_BYTES = 16
_NONCE_BYTES = 12


@dataclass(frozen=True, kw_only=True)
class ScryptParams:
    """Cost of turning a passphrase into a key. The default costs 128 MiB and about a second per guess."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if self.n < MIN_SCRYPT_N or self.n & (self.n - 1):
            raise InputError(f"scrypt N must be a power of two of at least {MIN_SCRYPT_N}; got {self.n}")
        if not 1 <= self.r <= 64 or not 1 <= self.p <= 16:
            raise InputError(f"scrypt r must be in 1..64 and p in 1..16; got r={self.r}, p={self.p}")


@runtime_checkable
class Signer(Protocol):
    """Anything that can sign bytes for a registered issuer key: an :class:`IssuerKey`, or an HSM wrapper."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class IssuerKey:
    """An issuer's decrypted Ed25519 key pair. Lives in memory only; saved solely in encrypted form."""

    def __init__(self, *, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = check_issuer_name(name)
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def generate(cls, name: str) -> IssuerKey:
        """A fresh key from the operating system's random source."""
        return cls(name=name, private_key=Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``data``."""
        return self._private_key.sign(data)

    def public_key_pem(self) -> str:
        return public_key_pem(self.public_key)

    def __repr__(self) -> str:  # never show key material
        return f"IssuerKey(name={self.name!r}, key_id={self.key_id[:16]}...)"


def check_issuer_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or "\\" in name or any(ord(c) < 32 for c in name):
        raise InputError("an issuer name must be 1 to 64 printable characters without backslashes "
                         "(e.g. 'Example Imaging AI Ltd')")
    return name


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Key id: hex SHA-256 of the DER-encoded SubjectPublicKeyInfo of the public key."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return sha256_hex(der)


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    """PEM text (SubjectPublicKeyInfo) of a public key, the form that is exported and stored in registries."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def load_public_key_pem(text: str | bytes, *, source: str | Path | None = None) -> Ed25519PublicKey:
    """Parse an Ed25519 public key from PEM; anything else is a RegistryError naming ``source``."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise RegistryError("not a PEM public key; expected the output of `medsign keys export-public`",
                            path=source) from None
    if not isinstance(key, Ed25519PublicKey):
        raise RegistryError(f"the public key is {type(key).__name__}, not Ed25519", path=source)
    return key


def load_public_key_file(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM public key file (a trust anchor)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RegistryError("public key file not found", path=path) from None
    except OSError as error:
        raise RegistryError(f"cannot read the public key file: {error.strerror}", path=path) from None
    return load_public_key_pem(data, source=path)


def signature_is_valid(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` under ``public_key``."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def passphrase_from_env() -> str | None:
    """The passphrase from MEDSIGN_PASSPHRASE, or None when it is unset (the CLI then prompts)."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value if value else None


def check_new_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise InputError(f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters; "
                         "a long random phrase is best")


def save_issuer_key(key: IssuerKey, path: str | Path, passphrase: str, *,
                    scrypt: ScryptParams | None = None) -> Path:
    """Encrypt ``key`` with ``passphrase`` and write it to ``path`` (mode 0600); never overwrites a file."""
    check_new_passphrase(passphrase)
    scrypt = scrypt or ScryptParams()
    salt = os.urandom(_SALT_BYTES)
    nonce = os.urandom(_NONCE_BYTES)
    header: dict[str, Any] = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "name": key.name,
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": key.key_id,
        "public_key": key.public_key_pem(),
        "kdf": {"name": "scrypt", "n": scrypt.n, "r": scrypt.r, "p": scrypt.p, "length": 32,
                "salt": to_base64(salt)},
        "cipher": {"name": "AES-256-GCM", "nonce": to_base64(nonce)},
    }
    secret = key._private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                            serialization.NoEncryption())
    aes_key = _derive(passphrase, salt, scrypt)
    ciphertext = AESGCM(aes_key).encrypt(nonce, secret, canonical_json(header))
    document = dict(header, ciphertext=to_base64(ciphertext))
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    folder = Path(path).parent
    if not folder.exists():  # e.g. `--issuer-key ~/medsign/issuer.key`: a private folder, made for the key
        try:
            folder.mkdir(mode=0o700, parents=True)
        except OSError as error:
            raise InputError(f"cannot create the key's folder: {error.strerror or error}", path=path) from None
    try:
        return write_atomic(path, data, mode=0o600, overwrite=False)
    except InputError as error:
        raise RegistryError(str(error)) from None


def create_issuer_key(path: str | Path, passphrase: str, *, name: str,
                      scrypt: ScryptParams | None = None) -> IssuerKey:
    """Generate a new issuer key and save it encrypted at ``path``."""
    check_new_passphrase(passphrase)
    key = IssuerKey.generate(name)
    save_issuer_key(key, path, passphrase, scrypt=scrypt)
    return key


@dataclass(frozen=True)
class IssuerKeyInfo:
    """The unencrypted part of a key file: enough to show which key it is, not enough to trust it."""

    path: Path
    name: str
    key_id: str
    public_key_pem: str


def read_issuer_key_info(path: str | Path) -> IssuerKeyInfo:
    """Read the header of a key file without the passphrase (unauthenticated until the key is loaded)."""
    path = Path(path)
    header = _read_key_file(path)
    return IssuerKeyInfo(path=path, name=header["name"], key_id=header["key_id"],
                         public_key_pem=header["public_key"])


def load_issuer_key(path: str | Path, passphrase: str) -> IssuerKey:
    """Decrypt the issuer key at ``path``. Wrong passphrase, altered file, open permissions: RegistryError."""
    path = Path(path)
    document = _read_key_file(path)
    _check_private_permissions(path)
    try:
        kdf = document["kdf"]
        scrypt = ScryptParams(n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]))
        salt = from_base64(kdf["salt"])
        nonce = from_base64(document["cipher"]["nonce"])
        ciphertext = from_base64(document["ciphertext"])
    except (KeyError, TypeError, ValueError, InputError) as error:
        raise RegistryError(f"the issuer key file is damaged ({error}); restore it from your backup",
                            path=path) from None
    header = {name: value for name, value in document.items() if name != "ciphertext"}
    try:
        secret = AESGCM(_derive(passphrase, salt, scrypt)).decrypt(nonce, ciphertext, canonical_json(header))
    except InvalidTag:
        raise RegistryError("wrong passphrase for this issuer key (or the file was altered); "
                            f"check the passphrase or the {PASSPHRASE_ENV} variable", path=path) from None
    key = IssuerKey(name=document["name"], private_key=Ed25519PrivateKey.from_private_bytes(secret))
    if key.key_id != document["key_id"]:
        raise RegistryError("the decrypted key does not match the key id recorded in the file; "
                            "the file is corrupt, restore it from your backup", path=path)
    return key


def _read_key_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError("issuer key file not found; create one with `medsign keys init --issuer-key FILE`",
                            path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RegistryError(f"cannot read the issuer key file: {error}", path=path) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if not isinstance(document, dict) or document.get("format") != KEY_FILE_FORMAT:
        raise RegistryError("not a medsign issuer key file (expected JSON with format "
                            f"{KEY_FILE_FORMAT!r}, as written by `medsign keys init`)", path=path)
    if document.get("version") != KEY_FILE_VERSION or document.get("algorithm") != SIGNATURE_ALGORITHM:
        raise RegistryError(f"unsupported issuer key file version {document.get('version')!r} or algorithm "
                            f"{document.get('algorithm')!r}; this software reads version {KEY_FILE_VERSION} "
                            f"{SIGNATURE_ALGORITHM} keys", path=path)
    for field in ("name", "key_id", "public_key"):
        if not isinstance(document.get(field), str):
            raise RegistryError(f"the issuer key file lacks its {field!r} field; restore it from your backup",
                                path=path)
    return document


def _check_private_permissions(path: Path) -> None:
    """Refuse a key file that others can read, as OpenSSH does."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RegistryError(f"permissions {mode:04o} are too open for an issuer key; "
                            f"run `chmod 600 {path}`", path=path)


def _derive(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase.encode("utf-8"))

