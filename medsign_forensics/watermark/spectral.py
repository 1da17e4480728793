"""The spectral watermark: a training-free extractor with blind synchronisation, and the mark it reads.

Why this and not a learned (HiDDeN) extractor: on this project's 2-core CPU a learned extractor plateaued at
0.81 bit accuracy after 20,000 steps (BENCHMARKS.md). This one needs no training; every number that defines it
is in :class:`SpectralConfig`, and its behaviour was chosen by measurement (``benchmarks/spectral_extractor.py``).

The mark is 64-pixel periodic: a sum of cosines at lattice frequencies (ky, kx) / 64 cycles per pixel, inside
an annulus that JPEG keeps and where a radiograph's own spectrum is weak. Each cosine takes the phase of the
image's own component at its frequency (:func:`informed_residual`), so the image adds to the mark.

* **Data bins.** Mirror pairs (ky, kx) <-> (ky, -kx), ky, kx >= 1. Each bit owns ``pairs_per_bit`` pairs; its set
  A takes one member of each pair (half on the kx > 0 side, half on kx < 0, which cancels a global left/right
  anisotropy) and its set B the mirrors. A one puts energy in A, a zero in B, so half the bins carry energy
  whatever the key. The bit is read as ``mean log-power over A > mean over B``: equal-radius bins, so the
  spectral slope of an unmarked image favours neither side (fairness is measured, and verify's null is
  calibrated on it: :mod:`medsign_forensics.watermark.calibration`).
* **Pilot.** A few fixed lattice frequencies, placed so that no 90-degree rotation maps the set onto itself,
  carry ``pilot_share`` of the energy. The reader finds them by a rotation x scale grid search over the
  whitened log-power spectrum; the best pilot score is also the *presence* statistic.
* **Read.** Bits compare the log-power minus its ``read_box`` local mean, which removes the broad, consistent
  anisotropy of one image family's anatomy (see :meth:`SpectralExtractor.logits_at`).
* **Amplitude.** The residual is shaped by the brightness-aware mask :func:`amplitude_mask` (more amplitude
  where a x2 brightening does not clip, little in near-black pixels where a negative residual would clip).

Geometry: an image rotated by theta and scaled by s has its spectrum rotated by theta and divided by s, so a
tile frequency f is found at R(theta) f / s. Cropping changes no frequency. Bits are read at the found geometry
with bilinear interpolation; the read is differentiable (``torch.fft``), the search is not and runs without
gradients, so :meth:`SpectralExtractor.forward` serves decoder fine-tuning and verification alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsign_forensics.config import DEFAULT_KEY_BITS, SUPPORTED_KEY_BITS
from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError

DEFAULT_PILOTS: tuple[tuple[int, int], ...] = ((2, 11), (9, 7), (10, -6), (4, -11), (6, 14), (15, -3))
# log(|X|^2 + EPS): keeps the log finite on flat images without touching any real spectrum (pixels in [0, 1]).
EPS = 1e-8


@dataclass(frozen=True)
class SpectralConfig:
    """Everything that defines the mark and its reader; saved in the extractor folder."""

    bits: int = DEFAULT_KEY_BITS
    tile: int = 64
    r_min: float = 0.05  # annulus of the data bins, cycles per pixel
    r_max: float = 0.30
    pairs_per_bit: int = 4
    pilots: tuple[tuple[int, int], ...] = DEFAULT_PILOTS
    pilot_share: float = 0.2  # of the residual's energy
    layout_seed: int = 0  # which pairs each bit owns
    rotation_max: float = 45.0  # degrees, searched symmetrically
    rotation_step: float = 1.0
    scale_min: float = 0.62  # below this the data bins of a rotated image alias past Nyquist
    scale_max: float = 2.0
    scale_step: float = 0.02  # relative (log) step
    fine_rotation: tuple[float, float] = (1.0, 0.2)  # half-width, step
    fine_scale: tuple[float, float] = (0.02, 0.004)
    whiten_box: int = 9  # moving average subtracted from the log-power before the pilot search
    read_box: int = 5  # ... and before reading the bits (0: raw log-power); see SpectralExtractor.logits_at
    presence_threshold: float = 1.8  # pilot score below which no mark is present (see the benchmark)

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_KEY_BITS:
            raise InputError(f"key length {self.bits} is not supported; use one of {SUPPORTED_KEY_BITS}")
        if self.pairs_per_bit < 2 or self.pairs_per_bit % 2:
            raise InputError(f"pairs_per_bit must be an even number >= 2, got {self.pairs_per_bit}")
        if not 0 < self.r_min < self.r_max < 0.5:
            raise InputError(f"the annulus {self.r_min}..{self.r_max} cycles/pixel must lie inside (0, 0.5)")
        if not 0 < self.pilot_share < 1:
            raise InputError(f"pilot_share {self.pilot_share} must lie in (0, 1)")
        if not 0 < self.scale_min < 1 < self.scale_max:
            raise InputError("the scale search must include 1 (scale_min < 1 < scale_max)")
        object.__setattr__(self, "pilots", tuple((int(a), int(b)) for a, b in self.pilots))
        object.__setattr__(self, "fine_rotation", tuple(self.fine_rotation))
        object.__setattr__(self, "fine_scale", tuple(self.fine_scale))

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpectralConfig:
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class Layout:
    """Where each bit lives: per bit, the A and B lattice frequencies (bits, pairs_per_bit, 2) in tile units."""

    a: np.ndarray
    b: np.ndarray
    pilots: np.ndarray = field(repr=False)


def layout(config: SpectralConfig) -> Layout:
    """The bit-to-frequency assignment of ``config`` (a pure function of it)."""
    t = config.tile
    pilots = np.array(config.pilots, dtype=np.int64)

    def near_pilot(ky: int, kx: int) -> bool:
        return bool(np.any(np.maximum(np.abs(pilots[:, 0] - ky), np.abs(pilots[:, 1] - kx)) <= 1))

    pairs = []
    for ky in range(1, t // 2):
        for kx in range(1, t // 2):
            radius = math.hypot(ky, kx) / t
            if config.r_min <= radius < config.r_max and not near_pilot(ky, kx) and not near_pilot(ky, -kx):
                pairs.append((ky, kx))
    needed = config.bits * config.pairs_per_bit
    if len(pairs) < needed:
        raise InputError(f"the annulus holds {len(pairs)} mirror pairs but {config.bits} bits x "
                         f"{config.pairs_per_bit} pairs need {needed}; widen it or use fewer pairs per bit")
    rng = np.random.default_rng([config.layout_seed, 41])
    chosen = np.array(pairs, dtype=np.int64)[rng.permutation(len(pairs))[:needed]]
    chosen = chosen.reshape(config.bits, config.pairs_per_bit, 2)
    # Half of each bit's A members on the kx > 0 side, half on kx < 0.
    side = np.where(np.arange(config.pairs_per_bit) < config.pairs_per_bit // 2, 1, -1)
    a = np.stack([chosen[..., 0], chosen[..., 1] * side], axis=-1)
    b = np.stack([chosen[..., 0], -chosen[..., 1] * side], axis=-1)
    return Layout(a=a, b=b, pilots=pilots)


def lattice_mask(config: SpectralConfig, size: int) -> np.ndarray:
    """Boolean (size, size) FFT mask of every bin the mark can occupy for ANY key (both members of every bit's
    pairs, the pilots, and their conjugates): public, so it is what a copy or removal attack works on."""
    lay, step = layout(config), size // config.tile
    mask = np.zeros((size, size), dtype=bool)
    for ky, kx in np.concatenate([lay.a.reshape(-1, 2), lay.b.reshape(-1, 2), lay.pilots]):
        for sy, sx in ((ky, kx), (-ky, -kx)):
            mask[(sy * step) % size, (sx * step) % size] = True
    return mask


def on_frequencies(config: SpectralConfig, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frequencies that carry energy for ``key`` (data bins, then pilots) in tile units (n, 2), and each
    one's share of the residual's energy (sums to 1)."""
    key = np.asarray(key, dtype=np.uint8).ravel()
    if key.size != config.bits:
        raise InputError(f"the extractor reads {config.bits}-bit keys; got a {key.size}-bit key")
    lay = layout(config)
    data = np.where(key.astype(bool)[:, None, None], lay.a, lay.b).reshape(-1, 2)
    shares = np.concatenate([np.full(len(data), (1 - config.pilot_share) / len(data)),
                             np.full(len(lay.pilots), config.pilot_share / len(lay.pilots))])
    return np.concatenate([data, lay.pilots]), shares


def _windowed_spectrum(images: torch.Tensor) -> torch.Tensor:
    """FFT of (B, H, W) images after removing the Hann-weighted mean and applying a separable Hann window."""
    _, height, width = images.shape
    window = (torch.hann_window(height, periodic=False, dtype=images.dtype)[:, None]
              * torch.hann_window(width, periodic=False, dtype=images.dtype)[None, :])
    mean = (images * window).sum(dim=(1, 2), keepdim=True) / window.sum()
    return torch.fft.fft2((images - mean) * window)


def informed_residual(images: torch.Tensor, key: np.ndarray, config: SpectralConfig, *,
                      log_amplitudes: torch.Tensor | None = None,
                      phases: torch.Tensor | None = None) -> torch.Tensor:
    """The unit-RMS mark for ``key`` on (B, H, W) images: one cosine per carrying frequency, each with the
    PHASE of the image's own component at that frequency (informed embedding).

    The reader compares powers, so a cosine in phase with the image's component adds to it instead of
    interfering at random: at equal energy this lifted bit accuracy on real radiographs from 0.96 to 0.998 (no
    attack) and from 0.89 to 0.99 (JPEG 50) (``benchmarks/spectral_extractor.py``). ``log_amplitudes`` (n,)
    rescales each frequency (learned by stage 2); the phases carry no gradient. ``phases`` (B, n), radians
    with the origin at the image centre, replaces the informed phases: a deployment's content binding
    (:mod:`.binding`). H and W must be multiples of the tile so that every frequency falls on an FFT bin.
    """
    batch, height, width = images.shape
    t = config.tile
    if height % t or width % t:
        raise InputError(f"the mark is written on images whose sides are multiples of {t} pixels; got {width}x{height}")
    frequencies, shares = on_frequencies(config, key)
    rows = torch.from_numpy((frequencies[:, 0] * (height // t)) % height)
    cols = torch.from_numpy((frequencies[:, 1] * (width // t)) % width)
    if phases is None:
        with torch.no_grad():
            phase = torch.angle(_windowed_spectrum(images.detach().double())[:, rows, cols])
    else:  # centre origin -> FFT origin (pixel 0): cos(2 pi f.(x - c) + phi) = cos(2 pi f.x + phi - 2 pi f.c)
        shift = 2 * math.pi * (frequencies[:, 0] * (height - 1) / 2 + frequencies[:, 1] * (width - 1) / 2) / t
        phase = phases.detach().double() - torch.from_numpy(shift)
    amplitude = torch.from_numpy(np.sqrt(2 * shares)).to(images.dtype)
    if log_amplitudes is not None:
        amplitude = amplitude * torch.exp(log_amplitudes.to(images.dtype))
    spectrum = torch.zeros(batch, height, width, dtype=torch.complex64 if images.dtype != torch.float64
                           else torch.complex128)
    coefficients = torch.polar(amplitude.expand(batch, -1) * (height * width), phase.to(images.dtype))
    spectrum = spectrum.index_put(
        (torch.arange(batch)[:, None], rows[None], cols[None]), coefficients.to(spectrum.dtype)
    )
    residual = torch.fft.ifft2(spectrum).real
    return residual / residual.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12)


def amplitude_mask(images: torch.Tensor) -> torch.Tensor:
    """Brightness-aware amplitude in [0.5, 1.5]: high in mid-dark pixels that survive a x2 brightening, low in
    near-black ones where a negative residual clips."""
    return 0.5 + torch.sigmoid((0.5 - images) / 0.04) * torch.sigmoid((images - 0.05) / 0.01)


def rms_for_psnr(psnr: float) -> float:
    """The residual RMS (pixels in [0, 1]) whose mean squared error gives ``psnr`` dB."""
    return 10 ** (-psnr / 20)


def embed(images: torch.Tensor, key: np.ndarray, config: SpectralConfig, *, psnr: float,
          gain: torch.Tensor | None = None, log_amplitudes: torch.Tensor | None = None,
          phases: torch.Tensor | None = None) -> torch.Tensor:
    """Mark (B, H, W) images in [0, 1] with ``key`` at ``psnr`` dB (before clipping and storage).

    residual = informed cosines x :func:`amplitude_mask` x ``gain`` (B, H, W; a deployment's learned spatial
    gain, else 1), rescaled per image to the PSNR budget. Stage 1 evaluates the extractor with gain 1; stage 2
    learns ``gain`` and ``log_amplitudes`` (:mod:`medsign_forensics.watermark.head`). ``phases``: see
    :func:`informed_residual`.
    """
    residual = informed_residual(images, key, config, log_amplitudes=log_amplitudes, phases=phases)
    residual = residual * amplitude_mask(images)
    if gain is not None:
        residual = residual * gain
    residual = residual * (rms_for_psnr(psnr) / residual.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12))
    return torch.clamp(images + residual, 0.0, 1.0)


def embed_image(image: np.ndarray, key: np.ndarray, config: SpectralConfig, *, psnr: float = 40.5) -> np.ndarray:
    """:func:`embed` for one (H, W) float image (numpy in, numpy out)."""
    marked = embed(torch.from_numpy(np.asarray(image, dtype=np.float32))[None], key, config, psnr=psnr)
    return marked[0].numpy()


# --- the reader ---------------------------------------------------------------------------------------------


def log_power(images: torch.Tensor) -> torch.Tensor:
    """log |FFT|^2 of (B, H, W) images, windowed as :func:`_windowed_spectrum`."""
    spectrum = _windowed_spectrum(images)
    return torch.log(spectrum.real**2 + spectrum.imag**2 + EPS)


def sample_spectrum(power: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Bilinear values of (B, H, W) spectra at (B or 1, P, 2) frequencies (fy, fx) in cycles/pixel, wrapping."""
    batch, height, width = power.shape
    u = frequencies[..., 0] * height
    v = frequencies[..., 1] * width
    y0, x0 = torch.floor(u), torch.floor(v)
    dy, dx = u - y0, v - x0
    y0, x0 = y0.long(), x0.long()
    flat = power.reshape(batch, -1)
    out: torch.Tensor | float = 0.0
    for oy, ox, weight in ((0, 0, (1 - dy) * (1 - dx)), (1, 0, dy * (1 - dx)), (0, 1, (1 - dy) * dx), (1, 1, dy * dx)):
        index = ((y0 + oy) % height) * width + (x0 + ox) % width
        out = out + weight * torch.gather(flat, 1, index.expand(batch, -1))
    return cast(torch.Tensor, out)  # a tensor after the first of the four corners


def transform(frequencies: torch.Tensor, rotation: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Frequencies (P, 2) seen in an image rotated by ``rotation`` degrees and scaled by ``scale``: (G, P, 2)."""
    theta = torch.deg2rad(rotation)[:, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    fy, fx = frequencies[None, :, 0], frequencies[None, :, 1]
    # Image coordinates (y down, x right): a content rotation by theta rotates the spectrum the same way.
    ry = (cos * fy + sin * fx) / scale[:, None]
    rx = (-sin * fy + cos * fx) / scale[:, None]
    return torch.stack([ry, rx], dim=-1)


def local_log_power(power: torch.Tensor, box: int) -> torch.Tensor:
    """(B, H, W) log-power minus its ``box`` x ``box`` moving average (circular): peaks stand out, slopes do not."""
    x = power[:, None]
    pad = box // 2
    return (x - F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), box, stride=1))[:, 0]


def _whiten(power: torch.Tensor, box: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(peaks, dilated): :func:`local_log_power`, and the same after a 3x3 max filter, which lets the coarse
    grid hit a peak it passes within a bin of."""
    peaks = local_log_power(power, box)[:, None]
    dilated = F.max_pool2d(F.pad(peaks, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    return peaks[:, 0], dilated[:, 0]


@dataclass(frozen=True)
class Reading:
    """What the reader found in a batch: logits (B, k), the geometry (degrees, scale) and the pilot score."""

    logits: torch.Tensor
    rotation: torch.Tensor
    scale: torch.Tensor
    presence: torch.Tensor

    @property
    def bits(self) -> np.ndarray:
        return (self.logits.detach() > 0).to(torch.uint8).cpu().numpy()


class SpectralExtractor(nn.Module):
    """Reads the spectral mark blindly (rotation, scale, crop) from (B, 1, H, W) images in [0, 1].

    ``forward`` returns the logits (B, k), differentiable with respect to the pixels at the geometry the
    (gradient-free) search found; :meth:`read` returns the whole :class:`Reading`.
    """

    # buffers (register_buffer), declared for the type checker: nn.Module's __getattr__ is Tensor | Module
    freq_a: torch.Tensor
    freq_b: torch.Tensor
    freq_pilot: torch.Tensor
    coarse: torch.Tensor
    fine: torch.Tensor

    def __init__(self, config: SpectralConfig | None = None) -> None:
        super().__init__()
        self.config = config or SpectralConfig()
        #: The empirical null of its bits (a NullCalibration, set by the loader); None: Binomial(k, 1/2).
        #: Equal-radius mirror bins are fair on real radiographs, but measurably biased on phantoms and
        #: base-model images (benchmarks/spectral_extractor.py), so the shipped extractor carries one.
        self.calibration: Any = None
        lay = layout(self.config)
        t = float(self.config.tile)
        self.register_buffer("freq_a", torch.from_numpy(lay.a.reshape(-1, 2) / t).float(), persistent=False)
        self.register_buffer("freq_b", torch.from_numpy(lay.b.reshape(-1, 2) / t).float(), persistent=False)
        self.register_buffer("freq_pilot", torch.from_numpy(lay.pilots / t).float(), persistent=False)
        c = self.config
        rotations = torch.arange(-c.rotation_max, c.rotation_max + 1e-6, c.rotation_step)
        steps = int(math.floor(math.log(c.scale_max / c.scale_min) / math.log1p(c.scale_step)))
        scales = c.scale_min * (1 + c.scale_step) ** torch.arange(steps + 1, dtype=torch.float64)
        scales = torch.cat([scales.float(), torch.ones(1)])  # exactly 1 is always a candidate
        grid_r, grid_s = torch.meshgrid(rotations, scales, indexing="ij")
        self.register_buffer("coarse", torch.stack([grid_r.ravel(), grid_s.ravel()], dim=1), persistent=False)
        fr = torch.arange(-c.fine_rotation[0], c.fine_rotation[0] + 1e-6, c.fine_rotation[1])
        fs = torch.arange(-c.fine_scale[0], c.fine_scale[0] + 1e-6, c.fine_scale[1])
        fine_r, fine_s = torch.meshgrid(fr, fs, indexing="ij")
        self.register_buffer("fine", torch.stack([fine_r.ravel(), fine_s.ravel()], dim=1), persistent=False)

    @property
    def bits(self) -> int:
        return self.config.bits

    @torch.no_grad()
    def synchronise(self, power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: (rotation, scale, pilot score) maximising the mean whitened log-power at the pilots."""
        peaks, dilated = _whiten(power, self.config.whiten_box)
        batch = power.shape[0]
        coarse = transform(self.freq_pilot, self.coarse[:, 0], self.coarse[:, 1])  # (G, P, 2)
        scores = sample_spectrum(dilated, coarse.reshape(1, -1, 2)).reshape(batch, len(self.coarse), -1).mean(-1)
        best = self.coarse[scores.argmax(dim=1)]  # (B, 2)
        rotation = best[:, None, 0] + self.fine[None, :, 0]
        scale = best[:, None, 1] * (1 + self.fine[None, :, 1])
        candidates = transform(self.freq_pilot, rotation.reshape(-1), scale.reshape(-1))  # (B*F, P, 2)
        fine = sample_spectrum(peaks, candidates.reshape(batch, -1, 2)).reshape(batch, len(self.fine), -1).mean(-1)
        index = fine.argmax(dim=1)
        rows = torch.arange(batch)
        return rotation[rows, index], scale[rows, index], fine[rows, index]

    def logits_at(self, power: torch.Tensor, rotation: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Bit logits (B, k) = mean log-power over A minus over B at the given geometry (differentiable).

        The log-power is first made local (minus its ``read_box`` moving average): images of one family share
        an anatomy whose broad spectral anisotropy favours one mirror of a pair consistently. Measured on 328
        mini-cxr images read at their true geometry, per-bit means spanned 0.06-0.90 on the raw log-power and
        0.45-0.59 (chi-square p 0.31) with a 5 x 5 local mean removed.
        """
        k, pairs = self.config.bits, self.config.pairs_per_bit
        if self.config.read_box:
            power = local_log_power(power, self.config.read_box)
        at_a = sample_spectrum(power, transform(self.freq_a, rotation, scale))
        at_b = sample_spectrum(power, transform(self.freq_b, rotation, scale))
        return (at_a - at_b).reshape(-1, k, pairs).mean(-1)

    def read(self, images: torch.Tensor, *, geometry: tuple[torch.Tensor, torch.Tensor] | None = None) -> Reading:
        """Search (unless ``geometry`` is given) and read; images (B, 1, H, W) or (B, H, W)."""
        if images.ndim == 4:
            if images.shape[1] != 1:
                raise InputError(f"expected greyscale images (B, 1, H, W), got {tuple(images.shape)}")
            images = images[:, 0]
        if images.ndim != 3 or min(images.shape[1:]) < 16:
            raise InputError(f"expected (B, H, W) images of at least 16 pixels per side, got {tuple(images.shape)}")
        power = log_power(images.float())
        if geometry is None:
            rotation, scale, presence = self.synchronise(power.detach())
        else:
            rotation, scale = (g.to(power) for g in geometry)
            presence = torch.full_like(rotation, float("nan"))
        return Reading(self.logits_at(power, rotation, scale), rotation, scale, presence)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.read(images).logits
