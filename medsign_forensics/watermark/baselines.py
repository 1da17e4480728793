"""Post-generation watermark baselines behind one interface: ``embed(image, key)`` and ``extract(image)``.

Both come from the ``invisible-watermark`` package (module ``imwatermark``), which works on BGR uint8 images of
at least 256x256 pixels. Our images are greyscale float32 (H, W) in [0, 1]; each baseline replicates the grey
image into three 8-bit channels, runs the package, and converts the result back to grey with BT.601 luma
(OpenCV's BGR2GRAY uses the same weights), because a medical image is stored as MONOCHROME2.

* ``dwtdct`` (MedSign Table 1 "DCT-DWT"): any key length (48 by default). The package's default embeds in the
  U chroma channel only (scales [0, 36, 36] on Y, U, V), which greyscale storage erases completely; we embed
  in the luma channel instead (scales [36, 0, 0]), the only channel a greyscale image has.
* ``rivagan``: the package's pretrained RivaGAN ONNX models (shipped in its wheel), fixed at 32 bits. RivaGAN
  hides its message across colour channels; measured on chest radiographs, the greyscale round trip decodes at
  chance level (about 0.5 bit accuracy) while the colour round trip decodes perfectly. :meth:`embed_rgb` and
  :meth:`extract_rgb` expose the colour path so that both facts can be reported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import cv2
import numpy as np

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.errors import InputError

MIN_PIXELS = 256 * 256  # imwatermark refuses smaller images


def _grey_to_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"baselines take a greyscale (H, W) image, got shape {image.shape}")
    if image.size < MIN_PIXELS:
        raise InputError(f"invisible-watermark needs at least 256x256 pixels, got {image.shape[0]}x{image.shape[1]}")
    pixels = to_uint8(image)
    return np.repeat(pixels[:, :, None], 3, axis=2)


def _bgr_to_grey(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0


def _check_key(key: np.ndarray, bits: int) -> list[int]:
    key = np.asarray(key, dtype=np.uint8).ravel()
    if key.size != bits or np.any(key > 1):
        raise InputError(f"this baseline carries {bits}-bit keys of 0/1 values, got {key.size} values")
    return [int(b) for b in key]


class Baseline(ABC):
    """A post-generation watermark: grey image + key -> grey image; grey image -> bits."""

    name: ClassVar[str]

    def __init__(self, bits: int) -> None:
        self.bits = bits

    @abstractmethod
    def embed(self, image: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Watermark a float32 (H, W) image in [0, 1] with a 0/1 key; returns float32 (H, W) in [0, 1]."""

    @abstractmethod
    def extract(self, image: np.ndarray) -> np.ndarray:
        """Read a key (uint8 0/1 array of ``bits``) from a float32 (H, W) image, blindly."""


class DwtDctBaseline(Baseline):
    """invisible-watermark's DWT-DCT, embedded in luma (see the module docstring)."""

    name = "dwtdct"

    def __init__(self, bits: int = 48, *, scale: float = 36.0) -> None:
        super().__init__(bits)
        if bits < 1 or scale <= 0:
            raise InputError(f"DWT-DCT needs a positive key length and scale, got bits={bits}, scale={scale}")
        self.scales = [scale, 0, 0]

    def embed(self, image: np.ndarray, key: np.ndarray) -> np.ndarray:
        from imwatermark.maxDct import EmbedMaxDct

        coder = EmbedMaxDct(_check_key(key, self.bits), wmLen=self.bits, scales=self.scales)
        return _bgr_to_grey(coder.encode(_grey_to_bgr(image)))

    def extract(self, image: np.ndarray) -> np.ndarray:
        from imwatermark.maxDct import EmbedMaxDct

        coder = EmbedMaxDct([], wmLen=self.bits, scales=self.scales)
        return np.asarray(coder.decode(_grey_to_bgr(image)), dtype=np.uint8)


class RivaGanBaseline(Baseline):
    """invisible-watermark's pretrained RivaGAN (32 bits), run through onnxruntime on the CPU."""

    name = "rivagan"

    def __init__(self) -> None:
        super().__init__(32)
        from imwatermark.rivaGan import RivaWatermark

        RivaWatermark.loadModel()  # reads the two ONNX files shipped inside the wheel; no network
        self._coder = RivaWatermark

    def embed_rgb(self, image: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Colour path: grey image in, the watermarked BGR uint8 image out (what RivaGAN was built for)."""
        return self._coder(_check_key(key, self.bits), 32).encode(_grey_to_bgr(image))

    def extract_rgb(self, bgr: np.ndarray) -> np.ndarray:
        return np.asarray(self._coder([], 32).decode(np.asarray(bgr, dtype=np.uint8)), dtype=np.uint8)

    def embed(self, image: np.ndarray, key: np.ndarray) -> np.ndarray:
        return _bgr_to_grey(self.embed_rgb(image, key))

    def extract(self, image: np.ndarray) -> np.ndarray:
        return self.extract_rgb(_grey_to_bgr(image))


BASELINES: dict[str, Callable[[], Baseline]] = {
    DwtDctBaseline.name: DwtDctBaseline, RivaGanBaseline.name: RivaGanBaseline
}


def get_baseline(name: str) -> Baseline:
    """Build a baseline by name with its default key length (dwtdct: 48 bits, rivagan: 32 bits)."""
    try:
        return BASELINES[name]()
    except KeyError:
        raise InputError(f"unknown baseline {name!r}; choose one of: {', '.join(BASELINES)}") from None
