"""A key is a k-bit message. One representation in memory (uint8 array of 0/1) and one on paper (hex)."""

from __future__ import annotations

import numpy as np

from medsign_forensics.config import SUPPORTED_KEY_BITS
from medsign_forensics.errors import InputError


def random_key(bits: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a uniformly random key of ``bits`` bits."""
    check_length(bits)
    return rng.integers(0, 2, size=bits, dtype=np.uint8)


def check_length(bits: int) -> None:
    if bits not in SUPPORTED_KEY_BITS:
        raise InputError(f"key length {bits} is not supported; use one of {SUPPORTED_KEY_BITS}")


def bits_to_hex(key: np.ndarray) -> str:
    """Hex form of a key, most significant bit first; length must be a multiple of 4."""
    key = np.asarray(key, dtype=np.uint8).ravel()
    if key.size % 4 or np.any(key > 1):
        raise InputError("a key must be a sequence of 0/1 values whose length is a multiple of 4")
    nibbles = key.reshape(-1, 4) @ np.array([8, 4, 2, 1], dtype=np.int64)
    return "".join("0123456789abcdef"[n] for n in nibbles)


def hex_to_bits(text: str) -> np.ndarray:
    """Inverse of :func:`bits_to_hex`."""
    text = text.strip().lower()
    if not text or any(c not in "0123456789abcdef" for c in text):
        raise InputError(f"{text!r} is not a hexadecimal key")
    values = np.array([int(c, 16) for c in text], dtype=np.uint8)
    return ((values[:, None] >> np.array([3, 2, 1, 0], dtype=np.uint8)) & 1).astype(np.uint8).ravel()


def matches(extracted: np.ndarray, key: np.ndarray) -> int:
    """Number of positions where two keys agree."""
    extracted = np.asarray(extracted, dtype=np.uint8).ravel()
    key = np.asarray(key, dtype=np.uint8).ravel()
    if extracted.shape != key.shape:
        raise InputError(f"cannot compare a {extracted.size}-bit message with a {key.size}-bit key")
    return int(np.sum(extracted == key))
