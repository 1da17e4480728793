"""The watermarking methods one evaluation compares, behind one shape: watermarked images plus a detector.

* In-generation (MedSign, Stable Signature mode, ablations): a deployment's decoder D_w decodes the SAME
  cached latents x0 as the original decoder D_o; its detector is the deployment's (whitened) extractor.
* Post-generation baselines (DWT-DCT, RivaGAN from ``invisible-watermark``): applied to the original images
  D_o(x0) after generation, read back by their own decoders. Their decoders refuse images under 256 x 256
  pixels; an attacked image that small (crop, resize) is resized back to the size it was embedded at with
  bicubic interpolation before decoding, which can only help them. DWT-DCT carries the deployment's key;
  RivaGAN is fixed at 32 bits and carries the key's first 32 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image

from medsign_forensics.errors import InputError
from medsign_forensics.watermark.baselines import MIN_PIXELS, Baseline, get_baseline

Detector = Callable[[Sequence[np.ndarray]], np.ndarray]


class MethodKind(str, Enum):
    IN_GENERATION = "in-generation"
    POST_GENERATION = "post-generation"


class Role(str, Enum):
    """Where a method appears in the report."""

    MEDSIGN = "medsign"
    STABLE_SIGNATURE = "stable-signature"
    ABLATION = "ablation"
    BASELINE = "baseline"
    LATENT = "latent"  # the latent layer's rows (evaluate/latent_rows.py)


BASELINE_TITLES = {"dwtdct": "DWT-DCT", "rivagan": "RivaGAN"}
ABLATION_TITLES = {
    "none": "MedSign",
    "no-aas": "w/o AAS",
    "no-cas": "w/o CAS",
    "no-tv": "w/o L_tv",
    "no-pre": "w/o L_pre",
    "stable-signature": "Stable Signature",
}


@dataclass
class Method:
    """One row of the tables: its watermarked images (8-bit grey, float32) and how to read bits back."""

    name: str
    kind: MethodKind
    role: Role
    key: np.ndarray
    images: list[np.ndarray]
    detector: Detector
    source: str  # deployment folder or baseline package
    # Fidelity is measured against ``reference`` (default: the cached originals); ``same_sample=False``: the
    # images are other samples of the same reports, so there is no pixel fidelity to measure at all.
    reference: list[np.ndarray] | None = None
    same_sample: bool = True
    layers: int = 1  # watermark layers the detector chooses between (the FPR is split between them)

    @property
    def bits(self) -> int:
        return int(self.key.size)


def extractor_detector(extractor: object) -> Detector:
    """Bits from the deployment's extractor (images of any size; whitened logits > 0)."""
    from medsign_forensics.watermark.extractor_io import extract_bits

    def detect(images: Sequence[np.ndarray]) -> np.ndarray:
        return extract_bits(extractor, list(images))[0]  # type: ignore[arg-type]

    return detect


def _restore_size(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.size >= MIN_PIXELS:
        return image
    resized = Image.fromarray(np.asarray(image, np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BICUBIC
    )
    return np.clip(np.asarray(resized), 0.0, 1.0).astype(np.float32)


def baseline_detector(baseline: Baseline, shape: tuple[int, int]) -> Detector:
    """The baseline's own blind decoder; attacked images below its minimum size are resized back to ``shape``."""

    def detect(images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([baseline.extract(_restore_size(image, shape)) for image in images]).astype(np.uint8)

    return detect


def baseline_key(name: str, key: np.ndarray) -> np.ndarray:
    """The key a baseline carries: the deployment's key (DWT-DCT), its first 32 bits (RivaGAN)."""
    return np.asarray(key, np.uint8)[:32] if name == "rivagan" else np.asarray(key, np.uint8)


def build_baseline(name: str, key: np.ndarray) -> Baseline:
    """DWT-DCT with the deployment key's length, or RivaGAN (32 bits)."""
    if name == "dwtdct":
        from medsign_forensics.watermark.baselines import DwtDctBaseline

        return DwtDctBaseline(bits=int(np.asarray(key).size))
    if name == "rivagan":
        if np.asarray(key).size < 32:
            raise InputError("RivaGAN carries 32 bits; the deployment key is shorter")
        return get_baseline("rivagan")
    return get_baseline(name)  # raises the InputError listing the known baselines
