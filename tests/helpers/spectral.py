"""Images for spectral-mark tests: phantom radiographs, and the copy attack on the mark's public lattice."""

from __future__ import annotations

import numpy as np

from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.watermark.spectral import SpectralConfig, layout

STORE = Requantize(8)


def phantom_radiograph(seed: int, size: int = 256) -> np.ndarray:
    """A phantom radiograph (the phantom world's renderer), cropped to ``size``."""
    from medsign_forensics.phantom.renderer import render_report

    reports = ("Large right pleural effusion.", "No acute abnormality.", "Moderate cardiomegaly.")
    return render_report(reports[seed % 3], seed=seed)[0].image[:size, :size].astype(np.float32)


def copy_lattice(target: np.ndarray, donor: np.ndarray, config: SpectralConfig) -> np.ndarray:
    """The copy attack: every public lattice bin of the mark (both mirrors of every bit, the pilots) taken from
    the donor's FFT into the target's, stored as 8-bit. Needs neither the key nor any secret."""
    lay = layout(config)
    step = target.shape[0] // config.tile
    mask = np.zeros(target.shape, dtype=bool)
    for ky, kx in np.concatenate([lay.a.reshape(-1, 2), lay.b.reshape(-1, 2), lay.pilots]):
        for sy, sx in ((ky, kx), (-ky, -kx)):
            mask[(sy * step) % target.shape[0], (sx * step) % target.shape[1]] = True
    spectrum = np.fft.fft2(target)
    spectrum[mask] = np.fft.fft2(donor)[mask]
    return STORE.exact(np.clip(np.fft.ifft2(spectrum).real, 0, 1))
