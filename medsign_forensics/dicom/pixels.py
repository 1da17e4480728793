"""The canonical digests a signed image statement commits to: pixel values and report text.

Pixel digest ``medsign-pixels-v1``: SHA-256 over the ASCII header ``medsign-pixels-v1\\n<rows> <columns>\\n``
followed by every pixel value, row by row, as a little-endian unsigned 16-bit integer. It is computed over the
decoded pixel VALUES, not over the stored Pixel Data bytes, so lossless re-encoding by a PACS (another
transfer syntax, JPEG-LS/RLE lossless, 8-bit values stored in 16 bits) keeps it, while any change to a value,
to the size, or a lossy recompression breaks it. Only single-frame greyscale images with values in 0..65535
have a digest.

Report digest: SHA-256 of the UTF-8 bytes of the report text after turning CR LF and CR into LF and removing
leading and trailing whitespace (DICOM text elements lose trailing spaces, so the digest must not depend on
them).
"""

from __future__ import annotations

import hashlib

import numpy as np

from medsign_forensics.attacks.codec import levels
from medsign_forensics.errors import InputError

PIXEL_HASH_HEADER = b"medsign-pixels-v1\n"


def pixel_sha256(pixels: np.ndarray) -> str:
    """Digest of a single-frame greyscale image's values (see the module docstring)."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise InputError(f"a pixel digest needs one non-empty greyscale frame (rows, columns); got shape "
                         f"{pixels.shape}")
    if pixels.dtype.kind not in "ui":
        raise InputError(f"a pixel digest needs integer pixel values; got {pixels.dtype}")
    if pixels.min() < 0 or pixels.max() > 0xFFFF:
        raise InputError("a pixel digest needs values in 0..65535")
    digest = hashlib.sha256(PIXEL_HASH_HEADER)
    digest.update(f"{pixels.shape[0]} {pixels.shape[1]}\n".encode("ascii"))
    digest.update(np.ascontiguousarray(pixels, dtype="<u2").tobytes())
    return digest.hexdigest()


def normalise_report(text: str) -> str:
    """The form of a report that is stored and digested: LF line ends, no surrounding whitespace."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def report_sha256(text: str) -> str:
    """Digest of a report text (see the module docstring)."""
    return hashlib.sha256(normalise_report(text).encode("utf-8")).hexdigest()


def quantize(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """Float greyscale in [0, 1] (the toolkit's image convention) -> uint8 (bits=8) or uint16 (bits=16)."""
    if bits not in (8, 16):
        raise InputError(f"pixel depth must be 8 or 16 bits; got {bits}")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.all(np.isfinite(image)):
        raise InputError(f"expected a finite greyscale image of shape (H, W); got shape {image.shape}")
    return levels(image, bits).astype(np.uint8 if bits == 8 else np.uint16)
