"""Images for spectral-mark tests: phantom radiographs, and the copy attack on the mark's public lattice."""

from __future__ import annotations

import numpy as np

from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.watermark.spectral import SpectralConfig, lattice_mask

STORE = Requantize(8)


def phantom_radiograph(seed: int, size: int = 256) -> np.ndarray:
    """A phantom radiograph (the phantom world's renderer), cropped to ``size``."""
    from medsign_forensics.phantom.renderer import render_report

    reports = ("Large right pleural effusion.", "No acute abnormality.", "Moderate cardiomegaly.")
    return render_report(reports[seed % 3], seed=seed)[0].image[:size, :size].astype(np.float32)


def copy_lattice(target: np.ndarray, donor: np.ndarray, config: SpectralConfig) -> np.ndarray:
    """The copy attack: every public lattice bin of the mark (both mirrors of every bit, the pilots) taken from
    the donor's FFT into the target's, stored as 8-bit. Needs neither the key nor any secret."""
    mask = lattice_mask(config, target.shape[0])
    spectrum = np.fft.fft2(target)
    spectrum[mask] = np.fft.fft2(donor)[mask]
    return STORE.exact(np.clip(np.fft.ifft2(spectrum).real, 0, 1))
