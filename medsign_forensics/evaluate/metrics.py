"""Image-quality, robustness, detection and diagnostic-consistency metrics of the evaluation harness.

Conventions (the Markdown report repeats them):

* Images are greyscale float32 (H, W) in [0, 1], QUANTISED TO 8 BITS first (a PNG/JPEG export stores them so);
  PSNR and SSIM (:mod:`medsign_forensics.watermark.fidelity` defines both) compare each watermarked image
  with the original decode of the same latent, and the tables give the mean over images of the per-image
  values. Identical images have infinite PSNR; such images are counted and left out of the mean (reported as
  ``identical``).
* Bit accuracy: matching bits / key length. Detection: an image is detected when its matching bits reach the
  threshold of :func:`medsign_forensics.key.threshold` for the target false-positive rate.
* Distribution: the Fréchet distance between two sets of features (:func:`frechet_distance`), e.g. the finding
  classifier's penultimate features of generated images against phantoms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from medsign_forensics.errors import InputError
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


@dataclass(frozen=True)
class Frechet:
    """A Fréchet distance and how its matrix square root behaved (``offset``: eps*I had to be added to both
    covariances because sqrtm of their product was not finite; ``max_imag``: the imaginary part dropped)."""

    distance: float
    n_a: int
    n_b: int
    offset: bool
    max_imag: float


def frechet_distance(a: np.ndarray, b: np.ndarray, *, eps: float = 1e-6) -> Frechet:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D), N >= 2 each.

    With fewer samples than dimensions the covariances are rank-deficient and the estimate is biased upwards:
    compare distances over equal N only."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"need two (N >= 2, D) feature sets of equal D, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    offset = not np.isfinite(root).all()
    if offset:
        shift = np.eye(cov_a.shape[0]) * eps
        root = scipy.linalg.sqrtm((cov_a + shift) @ (cov_b + shift))
    max_imag = float(np.abs(np.imag(root)).max())
    root = np.real(root)
    diff = mu_a - mu_b
    distance = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return Frechet(distance=distance, n_a=len(a), n_b=len(b), offset=offset, max_imag=max_imag)
