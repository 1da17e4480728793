"""File I/O shared by the package: atomic writes and file digests.

Every output is written to a temporary name beside its target and renamed into place, so a crash, a full
disk or Ctrl-C never leaves a half-written PNG, JSON or weights file behind. Every recorded or checked file
hash comes from :func:`sha256_file`, so all of them agree on one definition.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Lower-case hex SHA-256 of a file's bytes, read in 1 MiB chunks so large weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise a float image in [0, 1] (or pass a uint8 one through) to 8 bits, rounding to nearest."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def save_png(target: str | Path, image: np.ndarray) -> None:
    """Save a greyscale (H, W) or RGB (H, W, 3) image, float in [0, 1] or uint8, as an 8-bit PNG."""
    with atomic_path(target) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def save_npy(target: str | Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
