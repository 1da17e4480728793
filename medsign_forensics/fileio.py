"""File I/O shared by the package: atomic writes and file digests.

Every output is written to a temporary name beside its target and renamed into place, so a crash, a full
disk or Ctrl-C never leaves a half-written PNG, JSON or weights file behind. :func:`atomic_path` is the one
mechanism; where losing or clobbering a file matters (keys, signed studies) it also flushes to disk and can
refuse to overwrite, and :func:`write_atomic` turns every failure into an :class:`InputError`. Every recorded
or checked file hash comes from :func:`sha256_file`, so all of them agree on one definition.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.errors import InputError

# Creation modes (the umask still applies). Outputs are created like a plain open() would (OPEN_MODE); secrets
# such as issuer keys ask for PRIVATE_MODE explicitly.
PRIVATE_MODE = 0o600
OPEN_MODE = 0o666

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Lower-case hex SHA-256 of a file's bytes, read in 1 MiB chunks so large weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(
    target: str | Path, *, mode: int = OPEN_MODE, overwrite: bool = True, durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; publish it as ``target`` only if the block succeeds.

    Missing parent folders are created. The temporary file is created with ``mode`` from the start (not
    chmod-ed later), so a private key is never readable by others, not even for an instant. With
    ``overwrite=False`` it is published with a hard link, which fails atomically (FileExistsError) if
    ``target`` exists, so a concurrent writer can never be overwritten. With ``durable=True`` the file and
    then the folder entry are flushed to disk (fsync), so a power cut cannot leave an empty ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    created_mode = os.stat(tmp).st_mode & 0o777
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o777 != created_mode:  # safetensors replaces the file with an owner-only one
            os.chmod(tmp, created_mode)
        if durable:
            _fsync(tmp)
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if durable:
        with contextlib.suppress(OSError):  # harmless where folders cannot be opened
            _fsync(target.parent)


def _fsync(path: Path) -> None:
    """Flush a file's (or, on POSIX, a folder's) content to disk, whichever descriptor wrote it."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> Path:
    """Durably write ``data`` to ``path`` for files whose loss or clobbering matters; return ``path``.

    :func:`atomic_path` with ``durable=True``, except that the folder must already exist and every failure
    (including an existing file with ``overwrite=False``) is an :class:`InputError` naming the file.
    """
    path = Path(path)
    exists = "file already exists; refusing to overwrite it (move it away or choose another path)"
    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} does not exist; create it first", path=path)
    if not overwrite and path.exists():
        raise InputError(exists, path=path)
    try:
        with atomic_path(path, mode=mode, overwrite=overwrite, durable=True) as tmp:
            tmp.write_bytes(data)
    except FileExistsError:
        raise InputError(exists, path=path) from None
    except OSError as error:
        raise InputError(f"cannot write the file: {error.strerror or error}", path=path) from None
    return path


def write_bytes(target: str | Path, data: bytes, *, mode: int = OPEN_MODE) -> None:
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str, *, mode: int = OPEN_MODE) -> None:
    write_bytes(target, text.encode("utf-8"), mode=mode)


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_png(target: str | Path, image: np.ndarray, *, mode: int = OPEN_MODE) -> None:
    """Save a greyscale (H, W) or RGB (H, W, 3) image, float in [0, 1] or uint8, as an 8-bit PNG."""
    with atomic_path(target, mode=mode) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def save_npy(target: str | Path, array: np.ndarray, *, mode: int = OPEN_MODE) -> None:
    with atomic_path(target, mode=mode) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
