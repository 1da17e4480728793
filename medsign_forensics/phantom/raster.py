"""Raster primitives of the phantom world: soft steps, fast Gaussian blur, band-pass noise and soft tubes."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth cubic in between: soft edges for every drawn structure."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur. Wide kernels use three passes of a box filter (a close, linear approximation whose cost
    does not grow with the width)."""
    if sigma <= 0:
        return image
    if sigma < 6.0:
        return ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    # A box of odd width w has variance (w^2 - 1) / 12: mix the two odd widths around the ideal one so that
    # the three passes add up to sigma^2 as closely as odd widths allow.
    narrow = int(math.sqrt(4.0 * sigma * sigma + 1.0))
    narrow -= 1 - narrow % 2
    wide_passes = min(range(4), key=lambda k: abs(k * (narrow + 2) ** 2 + (3 - k) * narrow**2 - 3 - 12 * sigma**2))
    out = image
    for width in [narrow + 2] * wide_passes + [narrow] * (3 - wide_passes):
        out = ndimage.uniform_filter(out, size=width, mode="nearest")
    return out


def band_noise(rng: np.random.Generator, shape: tuple[int, int], fine: float, coarse: float) -> np.ndarray:
    """Zero-mean, unit-variance band-pass noise between two blur widths (pixels)."""
    white = rng.standard_normal(shape).astype(np.float32)
    field = smooth(white, fine) - smooth(white, coarse)
    return (field / (field.std() + 1e-8)).astype(np.float32)


def splat_lines(
    shape: tuple[int, int],
    starts: np.ndarray,
    ends: np.ndarray,
    widths: np.ndarray,
    amplitudes: np.ndarray,
) -> np.ndarray:
    """Draw many soft tubes (vessels, bronchi, septal lines) at once.

    Points sampled every half pixel along each segment are splatted bilinearly into one image per width class,
    and each class is blurred once with its width: the result is a tube whose peak density follows
    ``amplitudes`` (a projected cylinder is as dense as it is thick). ``starts``/``ends`` are (N, 2) pixel
    coordinates (x, y); ``widths`` are diameters in pixels.
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    if len(starts) == 0:
        return out
    lengths = np.hypot(*(ends - starts).T)
    counts = np.maximum(2, np.ceil(lengths / 0.5).astype(int) + 1)
    seg = np.repeat(np.arange(len(starts)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = offsets / np.repeat(counts - 1, counts)
    pts = starts[seg] + (ends[seg] - starts[seg]) * t[:, None]
    step = lengths[seg] / np.maximum(1, counts[seg] - 1)
    sigmas = np.maximum(0.7, widths[seg] / 2.3)
    classes = np.array([0.7, 1.1, 1.7, 2.6, 4.0])
    cls = np.abs(np.log(sigmas[:, None] / classes[None, :])).argmin(1)
    x, y = pts[:, 0], pts[:, 1]
    ok = (x >= 0) & (x < w - 1) & (y >= 0) & (y < h - 1)
    x, y, cls, step = x[ok], y[ok], cls[ok], step[ok]
    amp = amplitudes[seg][ok]
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    # Weight so that the blurred line's peak equals the amplitude: a line of unit linear density blurred by
    # sigma peaks at 1 / (sqrt(2 pi) sigma).
    weight = amp * step * math.sqrt(2 * math.pi) * classes[cls]
    base = cls * (h * w) + y0 * w + x0
    index = np.concatenate([base, base + 1, base + w, base + w + 1])
    weights = np.concatenate(
        [weight * (1 - fx) * (1 - fy), weight * fx * (1 - fy), weight * (1 - fx) * fy, weight * fx * fy]
    )
    layers = np.bincount(index, weights=weights, minlength=len(classes) * h * w).reshape(len(classes), h, w)
    for c, sigma in enumerate(classes):
        if layers[c].any():
            out += ndimage.gaussian_filter(layers[c].astype(np.float32), sigma, truncate=3.0)
    return out
