"""How a suspect image's pixels reach the extractor: at which resolution (:class:`Scaling`), and which extractor.

Both extractors read any size, so images up to the working size (256, the generated size) are read as they are
and larger ones are resized to a short side of 256 (``Scaling.AUTO``): that undoes up-scaling, keeps the
statistics at their calibrated resolution and bounds the cost of huge files. ``Scaling.NATIVE`` and
``Scaling.WORKING`` exist to measure the choice (benchmarks/verify_robustness.py).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from medsign_forensics.config import DEFAULT_EXTRACTOR_DIR
from medsign_forensics.errors import InputError, ModelError

if TYPE_CHECKING:  # torch loads only when an extractor is: `medsign --help` stays fast
    from medsign_forensics.watermark.extractor_io import Extractor

WORKING_SIZE = 256
# Largest image the extractor runs on (2048 x 2048): its first feature map is then 128 MiB.
MAX_EXTRACTION_PIXELS = 2048 * 2048
# Below this many pixels per side there is nothing a watermark could be read from.
MIN_SIDE = 32


class Scaling(str, Enum):
    """How an image is brought to the extractor (see the module docstring)."""

    AUTO = "auto"  # as is up to the working size; larger images: short side resized to the working size
    NATIVE = "native"  # always as is (down-scaled only beyond MAX_EXTRACTION_PIXELS)
    WORKING = "working"  # short side always resized to the working size


def reading_pixels(pixels: np.ndarray, *, scaling: Scaling = Scaling.AUTO,
                   working_size: int = WORKING_SIZE) -> tuple[np.ndarray, str]:
    """The pixels the extractor reads from a (H, W) float image, and a note when they were resized.

    Resampling is bicubic on float values (Pillow, antialiased when shrinking); InputError for an image too
    small to carry a watermark.
    """
    height, width = pixels.shape
    if min(height, width) < MIN_SIDE:
        raise InputError(f"the image is {width}x{height} pixels; at least {MIN_SIDE} per side are needed to read "
                         "a watermark")
    factor = 1.0
    if scaling is Scaling.WORKING or (scaling is Scaling.AUTO and min(height, width) > working_size):
        factor = working_size / min(height, width)
    if height * width * factor * factor > MAX_EXTRACTION_PIXELS:
        factor = math.sqrt(MAX_EXTRACTION_PIXELS / (height * width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if size == (width, height):
        return pixels, ""
    if min(size) < MIN_SIDE:
        raise InputError(f"the image is {width}x{height} pixels, too elongated to read a watermark from (it "
                         f"would be read at {size[0]}x{size[1]})")
    resized = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F").resize(
        size, resample=Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0), \
        f"read at {size[0]}x{size[1]} (resized from {width}x{height})"


def load_default_extractor() -> Extractor:
    """The shipped extractor, or a ModelError saying how to get one."""
    from medsign_forensics.watermark.extractor_io import load_extractor

    if not (DEFAULT_EXTRACTOR_DIR / "extractor.json").is_file():
        raise ModelError("the shipped extractor has not been trained into this installation yet; train one with "
                         "`medsign train --stage extractor --whiten-images N --out DIR` and pass --extractor DIR "
                         "(or copy DIR here)", path=DEFAULT_EXTRACTOR_DIR)
    return load_extractor(DEFAULT_EXTRACTOR_DIR)
