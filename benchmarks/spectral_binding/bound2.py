"""v2: phase binding modulo pi (keeps the embedding informed up to a sign) with SECRET per-frequency partners.

For each carrying lattice frequency f (tile units k, cycles/px f = k/64):
    g1 = f/2 + d_k, g2 = f/2 - d_k,  d_k = (a_k, b_k)/256, a_k, b_k secret odd integers in [-R, R]
    phi(f) = phase_host(g1) + phase_host(g2) + theta_k + s*pi, s in {0, 1} chosen by the embedder so that the
    cosine is within 90 degrees of the host's own component at f (never destructive: informed up to a sign).
Verifier: C2 = mean_f cos(2 (phase(F) - phase(G1) - phase(G2) - theta_k)) at the synchronised geometry.
"""
from __future__ import annotations

import numpy as np
import torch

from medsign_forensics.watermark.spectral import SpectralConfig, amplitude_mask, on_frequencies, rms_for_psnr, transform
from bound import cosines, dft_at, theta_for

R_OFF = 15


class Secret:
    def __init__(self, seed: int, r: int = R_OFF):
        rng = np.random.default_rng([seed, 2014])
        self.theta = rng.uniform(0, 2 * np.pi, size=(64, 64))
        odd = np.arange(-r, r + 1, 2)  # odd if r odd
        self.off = rng.choice(odd, size=(64, 64, 2))

    def partners(self, freqs_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.off[freqs_t[:, 0] % 64, freqs_t[:, 1] % 64] / 256.0
        half = freqs_t / 64.0 / 2.0
        return half + d, half - d


def partner_image(image, q):
    """The image the partner phases are read from: clipped at its own q-quantile, so that a brightness gain
    (which clips above 1) scales it exactly as long as gain * quantile < 1. q None: the image itself."""
    if q is None:
        return image
    return np.minimum(image, np.quantile(image, q))


def embed_v2(image, key, config: SpectralConfig, secret: Secret, *, psnr=43.0, informed_sign=True, q=None):
    freqs_t, shares = on_frequencies(config, key)
    fc = freqs_t / config.tile
    g1, g2 = secret.partners(freqs_t)
    pim = partner_image(image, q)
    phase = np.angle(dft_at(pim, g1)) + np.angle(dft_at(pim, g2)) + theta_for(freqs_t, secret.theta)
    if informed_sign:
        host = np.angle(dft_at(image, fc))
        phase = np.where(np.cos(phase - host) < 0, phase + np.pi, phase)
    residual = cosines(image.shape, fc, np.sqrt(2 * shares), phase)
    residual = residual / np.sqrt((residual**2).mean())
    residual = residual * amplitude_mask(torch.from_numpy(image.astype(np.float32))).numpy()
    residual = residual * (rms_for_psnr(psnr) / np.sqrt((residual**2).mean()))
    return np.clip(image + residual, 0, 1).astype(np.float32)


def coherence_v2(image, key, config: SpectralConfig, secret: Secret, rotation: float, scale: float, q=None):
    freqs_t, _ = on_frequencies(config, key)
    fc = freqs_t / config.tile
    g1, g2 = secret.partners(freqs_t)
    rot, sc = torch.tensor([float(rotation)]), torch.tensor([float(scale)])
    tf = lambda f: transform(torch.from_numpy(f).float(), rot, sc)[0].double().numpy()  # noqa: E731
    pim = partner_image(image, q)
    d = (np.angle(dft_at(image, tf(fc))) - np.angle(dft_at(pim, tf(g1))) - np.angle(dft_at(pim, tf(g2)))
         - theta_for(freqs_t, secret.theta))
    c2 = np.cos(2 * d)
    n_data = len(freqs_t) - len(config.pilots)
    return {"C": float(c2.mean()), "C_data": float(c2[:n_data].mean()), "C_pilot": float(c2[n_data:].mean())}
