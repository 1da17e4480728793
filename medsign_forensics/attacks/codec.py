"""The one 8-bit (or n-bit) quantiser and the one JPEG round trip of the toolkit.

In a watermarking tool requantisation and JPEG are attacks, so every place that stores pixels (PNG writer,
DICOM writer, render caches, baselines, the evaluation's 8-bit export) rounds through :func:`levels` and every
JPEG round trip goes through :func:`jpeg_round_trip`: an image stored by one part is the image another part's
attack assumes. Rounding: scale in float64, round half to even (``np.rint``), clip to the range.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medsign_forensics.errors import InputError


def levels(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """Float image in [0, 1] -> its nearest of the 2**bits integer levels 0..2**bits - 1, as float64 (values
    outside [0, 1] are clipped first)."""
    if not 1 <= bits <= 16:
        raise InputError(f"a quantisation depth must be 1 to 16 bits, got {bits}")
    top = float(2**bits - 1)
    return np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * top)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise a float image in [0, 1] to 8 bits (a uint8 image passes through unchanged)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return levels(image, 8).astype(np.uint8)


def quantise(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """Round to ``bits``-bit levels and back to float32 in [0, 1]: what storing and re-reading does."""
    return (levels(image, bits) / float(2**bits - 1)).astype(np.float32)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode with Pillow's (libjpeg) JPEG codec at ``quality`` and decode again: uint8 of the same shape
    ((H, W) grey or (H, W, 3) RGB); a float image in [0, 1] is quantised to 8 bits first, as a JPEG file is."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert(decoded.mode))
