"""v3: v2 + partner phases read through a centred DISC window of fixed physical radius (so a centre crop,
a rotation about the centre and a resize see the same host content), optionally on the image clipped at its
own in-disc q-quantile (brightness), and the carrying-frequency phase optionally read with saturated
pixels (>= 0.98) smoothly excluded (brightness x2 clipping)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from medsign_forensics.watermark.spectral import SpectralConfig, amplitude_mask, on_frequencies, rms_for_psnr, transform
from bound import cosines, theta_for
from bound2 import Secret

RP = 88.0  # disc radius in original pixels (fits inside a 50 %-area centre crop: half-edge 90.5)


def _grid(h, w):
    y = np.arange(h) - (h - 1) / 2.0
    x = np.arange(w) - (w - 1) / 2.0
    return y, x


def dft_weighted(img, weight, freqs):
    y, x = _grid(*img.shape)
    v = img.astype(np.float64)
    v = (v - (v * weight).sum() / weight.sum()) * weight
    ey = np.exp(-2j * np.pi * freqs[:, 0:1] * y[None, :])
    ex = np.exp(-2j * np.pi * freqs[:, 1:2] * x[None, :])
    return np.einsum("nw,nw->n", ey @ v, ex)


def disc(h, w, radius):
    y, x = _grid(h, w)
    r = np.hypot(y[:, None], x[None, :])
    return np.where(r < radius, np.cos(np.pi * r / (2 * radius)) ** 2, 0.0)


def hann(h, w):
    return np.hanning(h)[:, None] * np.hanning(w)[None, :]


def sat_weight(img, on):
    if not on:
        return 1.0
    return np.clip(cv2.GaussianBlur((img < 0.98).astype(np.float32), (0, 0), 3.0), 0, 1).astype(np.float64)


def partner_values(img, freqs, scale, q):
    w = disc(*img.shape, RP * scale)
    v = img
    if q is not None:
        v = np.minimum(img, np.quantile(img[w > 0], q))
    return dft_weighted(v, w, freqs)


def embed_v3(image, key, config: SpectralConfig, secret: Secret, *, psnr=43.0, q=None, sat=False):
    freqs_t, shares = on_frequencies(config, key)
    fc = freqs_t / config.tile
    g1, g2 = secret.partners(freqs_t)
    phase = (np.angle(partner_values(image, g1, 1.0, q)) + np.angle(partner_values(image, g2, 1.0, q))
             + theta_for(freqs_t, secret.theta))
    host = np.angle(dft_weighted(image, hann(*image.shape) * sat_weight(image, sat), fc))
    phase = np.where(np.cos(phase - host) < 0, phase + np.pi, phase)
    residual = cosines(image.shape, fc, np.sqrt(2 * shares), phase)
    residual = residual / np.sqrt((residual**2).mean())
    residual = residual * amplitude_mask(torch.from_numpy(image.astype(np.float32))).numpy()
    residual = residual * (rms_for_psnr(psnr) / np.sqrt((residual**2).mean()))
    return np.clip(image + residual, 0, 1).astype(np.float32)


def coherence_v3(image, key, config: SpectralConfig, secret: Secret, rotation, scale, *, q=None, sat=False):
    freqs_t, _ = on_frequencies(config, key)
    fc = freqs_t / config.tile
    g1, g2 = secret.partners(freqs_t)
    rot, sc = torch.tensor([float(rotation)]), torch.tensor([float(scale)])
    tf = lambda f: transform(torch.from_numpy(f).float(), rot, sc)[0].double().numpy()  # noqa: E731
    xf = dft_weighted(image, hann(*image.shape) * sat_weight(image, sat), tf(fc))
    d = (np.angle(xf) - np.angle(partner_values(image, tf(g1), scale, q))
         - np.angle(partner_values(image, tf(g2), scale, q)) - theta_for(freqs_t, secret.theta))
    c2 = np.cos(2 * d)
    n_data = len(freqs_t) - len(config.pilots)
    return {"C": float(c2.mean()), "C_data": float(c2[:n_data].mean()), "C_pilot": float(c2[n_data:].mean())}
