"""Content binding of the spectral mark: why a mark copied onto another image does not attribute.

The spectral mark's layout is public, so anyone holding one generated image can copy its lattice frequencies
into a real radiograph (measured before binding: 97 of 100 real images attributed at 38.7 dB). Binding ties
each carrying frequency's phase to the image it was written on, through a per-deployment secret:

    phi(f) = arg P(g1) + arg P(g2) + theta_f   (mod pi),   g1 = f/2 + d_f,  g2 = f/2 - d_f

``theta_f`` (uniform) and ``d_f`` (odd multiples of 1/256 cycles per pixel, |d| <= 15/256, so the partners
never fall on the mark's 64-pixel lattice) are secret per frequency. The embedder adds pi where the bound
phase would oppose the image's own component at f, so the mark stays informed up to a sign (the reader
compares powers). Because g1 + g2 = f, the invariant phi(f) - arg P(g1) - arg P(g2) does not move when the
image is translated (cropped); rotation and scaling map f, g1 and g2 by the same linear map, so the reader
evaluates it at the geometry the pilots found. Partner phases are read through a centred disc of
:data:`DISC_RADIUS` pixels (times the found scale), so a centred crop, a rotation about the centre and a
resize all see the same content, on the image clipped at its own 10 % quantile inside the disc, so that a
brightness gain (which clips bright pixels) scales the partners instead of changing them.

Coherence C = mean_f cos(2 (arg H(f) - arg P(g1) - arg P(g2) - theta_f)). A genuine image scores well above
zero; a mark copied onto another image keeps the donor's phases at f while its partners are the target's,
so each term is cos(2 U) with U uniform: mean 0, variance 1/2. :func:`coherence_threshold` is the Chernoff
bound on that null at the policy's false-positive rate, so a copied mark passes with at most that
probability. The study that chose this design (and what breaks it: a forger holding >= 16 of one deployment's
images, and off-centre crops of genuine images) is in ``benchmarks/spectral_binding/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from medsign_forensics.errors import InputError
from medsign_forensics.provenance.layers import BINDING_SECRET_BYTES as SECRET_BYTES
from medsign_forensics.watermark.spectral import SpectralConfig, on_frequencies, transform

#: Radius (pixels at the generated size) of the partners' disc: fits inside a centred crop of half the area of 256.
DISC_RADIUS = 88.0
#: The partners read the image clipped at this quantile of its pixels inside the disc.
PARTNER_QUANTILE = 0.1
MAX_OFFSET = 15  # partner offsets are odd numbers of 1/256 cycles per pixel in [-15, 15]
#: Fixed-point refinements of the bound phases on the marked image. Measured on 30 held-out mini-cxr images
#: (benchmarks/spectral_binding/refinements.py; mean C clean / JPEG 50, share passing 1e-6 after JPEG 50):
#: 0 -> 0.43 / 0.27, 57 %; 1 -> 0.58 / 0.31, 80 %; 2 -> 0.63 / 0.33, 87 %; 3 -> 0.68 / 0.34, 87 %; 4 -> 0.68 /
#: 0.33, 80 %. Each costs one more embed.
REFINEMENTS = 3
_TABLE = 64  # theta and offsets are tabulated per (ky mod 64, kx mod 64)


@dataclass(frozen=True)
class Binding:
    """A deployment's binding secret, expanded into its phase and partner tables."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise InputError(f"a binding secret is {SECRET_BYTES} bytes, got {len(self.secret)}")

    def __repr__(self) -> str:  # never show the secret
        return "Binding(<secret>)"

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        return _expand(self.secret)

    def theta(self, frequencies: np.ndarray) -> np.ndarray:
        """Secret phase offsets of (n, 2) lattice frequencies in tile units."""
        theta, _ = self._tables()
        return theta[frequencies[:, 0] % _TABLE, frequencies[:, 1] % _TABLE]

    def partners(self, frequencies: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """(g1, g2) in cycles per pixel for (n, 2) lattice frequencies in tile units; g1 + g2 = f."""
        _, offsets = self._tables()
        d = offsets[frequencies[:, 0] % _TABLE, frequencies[:, 1] % _TABLE] / 256.0
        half = frequencies / tile / 2.0
        return half + d, half - d


@lru_cache(maxsize=16)
def _expand(secret: bytes) -> tuple[np.ndarray, np.ndarray]:
    """theta (64, 64) uniform in [0, 2 pi) and offsets (64, 64, 2) odd in [-15, 15], from ChaCha20 under the secret."""
    cells = _TABLE * _TABLE
    encryptor = Cipher(algorithms.ChaCha20(secret, b"medsign-binding!"), mode=None).encryptor()
    stream = np.frombuffer(encryptor.update(bytes(cells * 6)), dtype=np.uint8)
    words = stream[: cells * 4].view("<u4").astype(np.float64)
    theta = (words / 2.0**32 * 2 * math.pi).reshape(_TABLE, _TABLE)
    odd = np.arange(-MAX_OFFSET, MAX_OFFSET + 1, 2)  # 16 values: four bits each
    offsets = odd[stream[cells * 4:] % len(odd)].reshape(_TABLE, _TABLE, 2)
    theta.setflags(write=False)
    offsets.setflags(write=False)
    return theta, offsets


# --- centred, windowed DFT at arbitrary frequencies ----------------------------------------------------------


def _centred(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(height) - (height - 1) / 2.0, np.arange(width) - (width - 1) / 2.0


def _dft(values: np.ndarray, weight: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """Weighted-mean-removed, weighted DFT of (H, W) ``values`` at (n, 2) frequencies (cycles/pixel), with the
    origin at the image centre."""
    y, x = _centred(*values.shape)
    centred = (values - (values * weight).sum() / weight.sum()) * weight
    ey = np.exp(-2j * np.pi * frequencies[:, :1] * y[None, :])
    ex = np.exp(-2j * np.pi * frequencies[:, 1:] * x[None, :])
    return np.einsum("nw,nw->n", ey @ centred, ex)


def _hann(height: int, width: int) -> np.ndarray:
    """The window of the spectral reader (symmetric Hann, as ``spectral._windowed_spectrum``)."""
    return np.hanning(height)[:, None] * np.hanning(width)[None, :]


def _disc(height: int, width: int, radius: float) -> np.ndarray:
    y, x = _centred(height, width)
    r = np.hypot(y[:, None], x[None, :])
    return np.where(r < radius, np.cos(np.pi * r / (2 * radius)) ** 2, 0.0)


def _partner_phases(image: np.ndarray, g1: np.ndarray, g2: np.ndarray, scale: float) -> np.ndarray:
    """arg P(g1) + arg P(g2) on the disc-windowed, quantile-clipped image."""
    height, width = image.shape
    weight = _disc(height, width, DISC_RADIUS * scale)
    inside = image[weight > 0]
    if inside.size == 0:
        raise InputError("the image is too small for the binding's partner disc")
    clipped = np.minimum(image, np.quantile(inside, PARTNER_QUANTILE))
    values = _dft(clipped, weight, np.concatenate([g1, g2]))
    return np.angle(values[: len(g1)]) + np.angle(values[len(g1):])


# --- embed and verify ---------------------------------------------------------------------------------------


def bound_phases(image: np.ndarray, key: np.ndarray, config: SpectralConfig, binding: Binding, *,
                 partners_from: np.ndarray | None = None) -> np.ndarray:
    """The phase (radians, origin at the image centre) of each carrying frequency of ``key``
    (:func:`~.spectral.on_frequencies` order) for an (H, W) image in [0, 1] at its generated geometry.

    ``partners_from``: read the partner phases from this image instead (the image already marked): the mark
    itself moves the partners (measured: cos 2(change) 0.56 on mini-cxr images), so the embedder refines the
    phases a few times on its own output (:data:`REFINEMENTS`)."""
    image = np.asarray(image, dtype=np.float64)
    partner_image = image if partners_from is None else np.asarray(partners_from, dtype=np.float64)
    frequencies, _ = on_frequencies(config, key)
    g1, g2 = binding.partners(frequencies, config.tile)
    phase = _partner_phases(partner_image, g1, g2, 1.0) + binding.theta(frequencies)
    host = np.angle(_dft(image, _hann(*image.shape), frequencies / config.tile))
    return np.where(np.cos(phase - host) < 0, phase + np.pi, phase)


def coherence(image: np.ndarray, key: np.ndarray, config: SpectralConfig, binding: Binding, *,
              rotation: float, scale: float) -> tuple[float, int]:
    """(C, n): the binding coherence of an (H, W) image in [0, 1] for ``key`` at the geometry the pilots found
    (degrees, scale), and the number of frequencies it averages."""
    image = np.asarray(image, dtype=np.float64)
    frequencies, _ = on_frequencies(config, key)
    g1, g2 = binding.partners(frequencies, config.tile)
    rot = torch.tensor([float(rotation)], dtype=torch.float64)
    sc = torch.tensor([float(scale)], dtype=torch.float64)

    def seen(f: np.ndarray) -> np.ndarray:
        return transform(torch.from_numpy(np.asarray(f, dtype=np.float64)), rot, sc)[0].numpy()

    host = np.angle(_dft(image, _hann(*image.shape), seen(frequencies / config.tile)))
    difference = host - _partner_phases(image, seen(g1), seen(g2), float(scale)) - binding.theta(frequencies)
    return float(np.cos(2 * difference).mean()), len(frequencies)


@lru_cache(maxsize=64)
def coherence_threshold(n: int, fpr: float) -> float:
    """The smallest C that n independent cos(2U) terms (U uniform) reach with probability at most ``fpr``, by
    the Chernoff bound P(mean >= t) <= exp(-n I(t)), I(t) = sup_l (l t - log I0(l)). Conservative: the
    normal approximation would give a slightly lower threshold (0.239 against this 0.26 for n = 198, 1e-6)."""
    from scipy.optimize import brentq, minimize_scalar
    from scipy.special import i0e

    if n < 1 or not 0 < fpr < 1:
        raise InputError(f"coherence_threshold needs n >= 1 and 0 < fpr < 1; got n={n}, fpr={fpr}")
    target = math.log(1 / fpr) / n

    def rate(t: float) -> float:
        best = minimize_scalar(lambda lam: -(lam * t - (math.log(i0e(lam)) + lam)), bounds=(0.0, 500.0),
                               method="bounded", options={"xatol": 1e-9})
        return float(-best.fun)

    if rate(1 - 1e-9) < target:
        return 1.0  # too few frequencies for this rate: nothing binds
    return float(brentq(lambda t: rate(t) - target, 1e-9, 1 - 1e-9, xtol=1e-6))
