"""Prototype: phase-bound spectral mark (study 14). Reuses medsign_forensics.watermark.spectral.

Binding: for every carrying frequency f (data bins of the key + pilots), the mark's cosine has phase
    phi(f) = phase_host(g1) + phase_host(g2) + theta_f,   g1 + g2 = f
where phases are those of the Hann-windowed DFT with the origin at the image centre, theta_f is a
per-deployment secret (uniform, from a secret seed), and (g1, g2) is
    mode 'half' : g1 = g2 = f/2                       (the brief's candidate a)
    mode 'split': g1 = f/2 + d, g2 = f/2 - d, d = (1, 1)/256 cycles/px (never on the 64-lattice)
The invariant phi(f) - phi(g1) - phi(g2) does not change under translation (crop), and rotation/scale map
f, g1, g2 by the same linear map, so the reader evaluates it at the synchronised geometry.
"""
from __future__ import annotations

import numpy as np
import torch

from medsign_forensics.watermark.spectral import (SpectralConfig, amplitude_mask, layout, on_frequencies,
                                                  rms_for_psnr, transform)

DELTA = np.array([1.0, 1.0]) / 256.0


def partners(freqs_c: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """freqs in cycles/pixel (n, 2) -> (g1, g2)."""
    half = freqs_c / 2.0
    if mode == "half":
        return half, half.copy()
    if mode == "split":
        return half + DELTA, half - DELTA
    raise ValueError(mode)


def dft_at(image: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Hann-windowed (mean-removed), centre-origin DFT of an (H, W) image at arbitrary freqs (n, 2) cyc/px."""
    h, w = image.shape
    wy = np.hanning(h)  # symmetric (periodic=False), as spectral._windowed_spectrum
    wx = np.hanning(w)
    win = wy[:, None] * wx[None, :]
    img = image.astype(np.float64)
    img = (img - (img * win).sum() / win.sum()) * win
    y = np.arange(h) - (h - 1) / 2.0
    x = np.arange(w) - (w - 1) / 2.0
    ey = np.exp(-2j * np.pi * freqs[:, 0:1] * y[None, :])  # (n, h)
    ex = np.exp(-2j * np.pi * freqs[:, 1:2] * x[None, :])  # (n, w)
    return np.einsum("nw,nw->n", ey @ img, ex)


def secret_theta(seed: int, n_max: int = 64) -> np.ndarray:
    """theta[ky mod 64, kx mod 64] uniform in [0, 2pi): the deployment's secret phase table."""
    return np.random.default_rng([seed, 1414]).uniform(0, 2 * np.pi, size=(n_max, n_max))


def theta_for(freqs_tile: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[freqs_tile[:, 0] % 64, freqs_tile[:, 1] % 64]


def cosines(shape: tuple[int, int], freqs_c: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    h, w = shape
    y = np.arange(h) - (h - 1) / 2.0
    x = np.arange(w) - (w - 1) / 2.0
    out = np.zeros((h, w))
    for (fy, fx), a, p in zip(freqs_c, amps, phases):
        # a*cos(2pi f.x + p) = Re(a e^{ip} e^{2pi i f.x}); DFT (e^{-2pi i f.x}) at f has phase p
        out += a * np.cos(2 * np.pi * (fy * y[:, None] + fx * x[None, :]) + p)
    return out


def embed_bound(image: np.ndarray, key: np.ndarray, config: SpectralConfig, table: np.ndarray, *,
                psnr: float = 43.0, mode: str = "split") -> np.ndarray:
    """Bound mark: same frequencies/shares/mask/PSNR as spectral.embed, phases bound to the host."""
    freqs_t, shares = on_frequencies(config, key)
    freqs_c = freqs_t / config.tile
    g1, g2 = partners(freqs_c, mode)
    phase = np.angle(dft_at(image, g1)) + np.angle(dft_at(image, g2)) + theta_for(freqs_t, table)
    residual = cosines(image.shape, freqs_c, np.sqrt(2 * shares), phase)
    residual = residual / np.sqrt((residual**2).mean())
    residual = residual * amplitude_mask(torch.from_numpy(image.astype(np.float32))).numpy()
    residual = residual * (rms_for_psnr(psnr) / np.sqrt((residual**2).mean()))
    return np.clip(image + residual, 0, 1).astype(np.float32)


def coherence(image: np.ndarray, key: np.ndarray, config: SpectralConfig, table: np.ndarray,
              rotation: float, scale: float, *, mode: str = "split") -> dict[str, float]:
    """Phase coherence of the key's carrying frequencies with their partners, at the found geometry."""
    freqs_t, _ = on_frequencies(config, key)
    freqs_c = freqs_t / config.tile
    g1, g2 = partners(freqs_c, mode)
    rot = torch.tensor([float(rotation)])
    sc = torch.tensor([float(scale)])
    tf = lambda f: transform(torch.from_numpy(f).float(), rot, sc)[0].double().numpy()  # noqa: E731
    F_, G1, G2 = tf(freqs_c), tf(g1), tf(g2)
    xf, x1, x2 = dft_at(image, F_), dft_at(image, G1), dft_at(image, G2)
    d = np.angle(xf) - np.angle(x1) - np.angle(x2) - theta_for(freqs_t, table)
    c = np.cos(d)
    w = np.abs(x1) * np.abs(x2)
    n_data = len(freqs_t) - len(config.pilots)
    return {"C": float(c.mean()), "Cw": float((w * c).sum() / w.sum()), "C_data": float(c[:n_data].mean()),
            "C_pilot": float(c[n_data:].mean())}


def lattice_points(config: SpectralConfig) -> np.ndarray:
    """All public lattice points the mark can use (every A and B bin of every bit, and the pilots), tile units."""
    lay = layout(config)
    return np.concatenate([lay.a.reshape(-1, 2), lay.b.reshape(-1, 2), lay.pilots])


def lattice_bins(freqs_tile: np.ndarray, size: int, tile: int = 64) -> tuple[np.ndarray, np.ndarray]:
    step = size // tile
    return (freqs_tile[:, 0] * step) % size, (freqs_tile[:, 1] * step) % size


def embed_bound_cancel(image: np.ndarray, key: np.ndarray, config: SpectralConfig, table: np.ndarray, *,
                       psnr: float = 43.0, mode: str = "split", cancel_off: bool = True) -> np.ndarray:
    """Bound mark, plus exact cancellation of the host's own raw-FFT content at the key's carrying bins
    (and, with cancel_off, at the complementary B bins of every bit), inside the same PSNR budget."""
    h, w = image.shape
    freqs_t, shares = on_frequencies(config, key)
    freqs_c = freqs_t / config.tile
    g1, g2 = partners(freqs_c, mode)
    phase = np.angle(dft_at(image, g1)) + np.angle(dft_at(image, g2)) + theta_for(freqs_t, table)
    mark = cosines(image.shape, freqs_c, np.sqrt(2 * shares), phase)
    mark = mark / np.sqrt((mark**2).mean())
    mark = mark * amplitude_mask(torch.from_numpy(image.astype(np.float32))).numpy()
    cancel_set = freqs_t
    if cancel_off:
        lay = layout(config)
        off = np.where(key.astype(bool)[:, None, None], lay.b, lay.a).reshape(-1, 2)
        cancel_set = np.concatenate([freqs_t, off])
    ry, rx = lattice_bins(cancel_set, h)
    X = np.fft.fft2(image.astype(np.float64))
    C = np.zeros_like(X)
    C[ry, rx] = -X[ry, rx]
    C[(-ry) % h, (-rx) % w] = -X[(-ry) % h, (-rx) % w]
    cancel = np.fft.ifft2(C).real
    target = rms_for_psnr(psnr) ** 2 * h * w
    a, b, c = (mark**2).sum(), 2 * (mark * cancel).sum(), (cancel**2).sum() - target
    disc = b * b - 4 * a * c
    s = (-b + np.sqrt(max(disc, 0))) / (2 * a) if disc > 0 else 0.0
    return np.clip(image + s * mark + cancel, 0, 1).astype(np.float32), float(c + target) / target
