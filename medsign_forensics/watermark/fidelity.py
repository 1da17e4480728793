"""Fidelity of a watermarked image to the original decode: PSNR and SSIM, one definition for the stage-2
trainer's held-out report and for the evaluation harness's tables.

* PSNR = 10 log10(1 / MSE) with data range 1. Identical images have infinite PSNR.
* SSIM: Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  averaged over the VALID region (no padding), as ``kornia.metrics.ssim(..., padding="valid")`` computes it;
  this equals scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``.
"""

from __future__ import annotations

import kornia
import numpy as np
import torch

SSIM_WINDOW = 11


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB for images in [0, 1]; ``inf`` when they are identical."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Gaussian SSIM over the valid region (module docstring); needs images of at least 11 x 11 pixels."""
    a = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))[None, None]
    b = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return float(kornia.metrics.ssim(a, b, SSIM_WINDOW, max_val=1.0, padding="valid").mean())
