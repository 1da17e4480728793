"""PCA whitening of the extractor's outputs (MedSign section 2.1, after Stable Signature).

A HiDDeN extractor run on unwatermarked images does not give fair coins: its logits have a mean and
correlations. Every false-positive rate we state assumes fair, independent bits, so we fit on the extractor's
raw logits for N unwatermarked images at the working resolution:

    mu = mean(x),   Sigma = (x - mu)^T (x - mu) / (N - 1)   (the unbiased sample covariance),
    Sigma = U Lambda U^T,   W = Lambda^-1/2 U^T,   b = -Lambda^-1/2 U^T mu,

and append ``y = W x + b`` as a Linear(k, k) layer. On the fitting images y then has zero mean and identity
covariance, so sign(y) is unbiased. Stable Signature skips the division by N and multiplies by sqrt(k), which
silently rescales the logits and so the BCE loss; here the scale is exactly unit variance (above the floor
below) and any loss temperature is an explicit setting of the training that uses the logits.

One departure: eigenvalues below ``EIGEN_FLOOR`` x their mean are raised to that floor before the division.
A trained extractor's clean-image outputs often have a few large and many near-constant directions (measured:
eigenvalue ratio 1e-9). Exact whitening would multiply those by up to 3e4, so the logits of a watermarked image
become huge and the BCE of decoder fine-tuning saturates. (Whether the floor helps that training is not shown
yet: with it and without it, CPU runs stalled near 0.67 bit accuracy; BENCHMARKS.md.) Raising the floor only
rescales directions by positive factors, so every sign, hence every bit and every p-value, is unchanged; those
directions simply keep a variance below 1 on clean images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.watermark.hidden import HiddenExtractor

# A bit is the SIGN of a whitened coordinate, and a sign does not depend on scale: a direction with a tiny but
# real variance still gives a fair coin once the mean is removed (a trained extractor's outputs on clean images
# often span a few large and many tiny directions; see BENCHMARKS.md). What whitening cannot rescue is a
# direction below float32 resolution: a standard-deviation ratio under ~1e-6 (variance ratio 1e-12) is a few
# float32 ulps, i.e. rounding noise, so the fit refuses there.
_MIN_EIGEN_RATIO = 1e-12
# Directions whose variance is below this fraction of the mean eigenvalue are scaled as if at the fraction.
EIGEN_FLOOR = 1e-2


def eigenvalue_floor(eigenvalues: np.ndarray) -> float:
    """The variance below which a whitened direction is no longer scaled to unit variance."""
    return EIGEN_FLOOR * float(np.mean(eigenvalues))


@dataclass(frozen=True)
class Whitening:
    """A fitted whitening transform and what it was fitted on."""

    weight: np.ndarray  # (k, k): max(Lambda, floor)^-1/2 U^T
    bias: np.ndarray  # (k,): -weight mu
    mean: np.ndarray  # (k,)
    eigenvalues: np.ndarray  # (k,), ascending
    n_samples: int

    @property
    def floor(self) -> float:
        return eigenvalue_floor(self.eigenvalues)

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, dtype=np.float64) @ self.weight.T + self.bias

    def summary(self) -> dict[str, object]:
        """What the extractor's manifest records about the fit."""
        return {
            "n_samples": self.n_samples,
            "covariance": "unbiased sample covariance, divided by N - 1",
            "min_eigenvalue": float(self.eigenvalues[0]),
            "max_eigenvalue": float(self.eigenvalues[-1]),
            "eigenvalue_floor": f"{EIGEN_FLOOR:g} x mean eigenvalue",
            "floored_directions": int((self.eigenvalues < self.floor).sum()),
        }


def fit_whitening(outputs: np.ndarray) -> Whitening:
    """Fit PCA whitening on (N, k) raw extractor outputs of unwatermarked images."""
    x = np.asarray(outputs, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"whitening needs an (N, k) array of outputs, got shape {x.shape}")
    n, k = x.shape
    if n <= k:
        raise InputError(f"whitening {k} outputs needs more than {k} images, got {n}; use more images")
    if not np.all(np.isfinite(x)):
        raise InputError("the extractor outputs contain NaN or infinite values; the extractor is broken")
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / (n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    if eigenvalues[0] <= _MIN_EIGEN_RATIO * max(eigenvalues[-1], 0.0) or eigenvalues[-1] <= 0:
        ratio = eigenvalues[0] / eigenvalues[-1] if eigenvalues[-1] > 0 else 0.0
        raise ModelError(
            f"the extractor's outputs are (nearly) degenerate on these images (smallest/largest covariance "
            f"eigenvalue {ratio:.1e}, floor {_MIN_EIGEN_RATIO:.0e}), so they cannot be whitened into {k} fair "
            "bits; train the extractor longer or fit on more varied images"
        )
    scales = np.maximum(eigenvalues, eigenvalue_floor(eigenvalues))
    weight = eigenvectors.T / np.sqrt(scales)[:, None]
    return Whitening(weight=weight, bias=-weight @ mean, mean=mean, eigenvalues=eigenvalues, n_samples=n)


@torch.no_grad()
def raw_outputs(extractor: HiddenExtractor, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Pre-whitening logits of the extractor (eval mode) over batches of (B, 1, H, W) images."""
    extractor.eval()
    device = extractor.head.weight.device
    chunks = [extractor.raw_logits(batch.to(device)).double().cpu().numpy() for batch in batches]
    if not chunks:
        raise InputError("no images were given to fit the whitening on")
    return np.concatenate(chunks)


def whiten_extractor(extractor: HiddenExtractor, batches: Iterable[torch.Tensor]) -> Whitening:
    """Fit whitening on unwatermarked image batches and append it to ``extractor`` (replacing any earlier)."""
    fit = fit_whitening(raw_outputs(extractor, batches))
    extractor.attach_whitening(torch.from_numpy(fit.weight).float(), torch.from_numpy(fit.bias).float())
    return fit
