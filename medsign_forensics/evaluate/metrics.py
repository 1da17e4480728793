"""Image-quality, robustness, detection and diagnostic-consistency metrics of the evaluation harness.

Conventions (the Markdown report repeats them):

* Images are greyscale float32 (H, W) in [0, 1], QUANTISED TO 8 BITS first (a PNG/JPEG export stores them so);
  PSNR and SSIM (:mod:`medsign_forensics.watermark.fidelity` defines both) compare each watermarked image
  with the original decode of the same latent, and the tables give the mean over images of the per-image
  values. Identical images have infinite PSNR; such images are counted and left out of the mean (reported as
  ``identical``).
* Bit accuracy: matching bits / key length. Detection: an image is detected when its matching bits reach the
  threshold of :func:`medsign_forensics.key.threshold` for the target false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsign_forensics.key import threshold


@dataclass(frozen=True)
class MeanOf:
    """A mean over images, with how many entered it and how many were left out (e.g. infinite PSNR)."""

    mean: float | None
    count: int
    excluded: int = 0

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanOf:
        finite = [v for v in values if np.isfinite(v)]
        return cls(
            mean=float(np.mean(finite)) if finite else None, count=len(finite), excluded=len(values) - len(finite)
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "count": self.count, "excluded": self.excluded}


@dataclass(frozen=True)
class Detection:
    """Detections among N images at one false-positive rate: the threshold M and the rate of images at or
    above it (a true-positive rate for watermarked images, a false-positive rate for unwatermarked ones)."""

    bits: int
    fpr_target: float
    threshold: int
    detected: int
    total: int

    @property
    def rate(self) -> float | None:
        return None if self.total == 0 else self.detected / self.total

    @classmethod
    def of(cls, match_counts: np.ndarray, bits: int, fpr_target: float) -> Detection:
        m = threshold(bits, fpr_target)
        counts = np.asarray(match_counts)
        return cls(
            bits=bits, fpr_target=fpr_target, threshold=m, detected=int(np.sum(counts >= m)), total=int(counts.size)
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "bits": self.bits,
            "fpr_target": self.fpr_target,
            "threshold": self.threshold,
            "detected": self.detected,
            "total": self.total,
            "rate": self.rate,
        }


def region_differences(
    original: np.ndarray, watermarked: np.ndarray, a_loc: np.ndarray, *, level: float = 0.5
) -> tuple[float, float] | None:
    """Mean |I_w - I_o| inside (A_loc > level) and outside the map's salient region; None when either is empty."""
    inside = np.asarray(a_loc) > level
    if not inside.any() or inside.all():
        return None
    difference = np.abs(np.asarray(watermarked, np.float64) - np.asarray(original, np.float64))
    return float(difference[inside].mean()), float(difference[~inside].mean())


def kind_confidences(probabilities: np.ndarray, labels: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
    """(N, len(kinds)): a finding kind's confidence = the maximum over its labels (its right and left sides)."""
    columns = []
    for kind in kinds:
        indices = [i for i, label in enumerate(labels) if label == kind or label.startswith(f"{kind}_")]
        columns.append(np.asarray(probabilities)[:, indices].max(axis=1))
    return np.stack(columns, axis=1) if columns else np.zeros((len(probabilities), 0), np.float32)
