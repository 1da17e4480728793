"""The skeleton layer of a phantom chest: ribs, clavicles, scapulae, humeral heads and the thoracic spine.

Bones are drawn from the chest's geometry (:class:`medsign_forensics.phantom.anatomy.Anatomy`) and never
change with findings, so an altered chest shares this layer with the normal one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from medsign_forensics.phantom.params import IMAGE_SIGN, STREAM_ANATOMY, stream
from medsign_forensics.phantom.raster import smooth, smoothstep
from medsign_forensics.reports.findings import Side

if TYPE_CHECKING:
    from medsign_forensics.phantom.anatomy import Anatomy


def bone_band(dn: np.ndarray, half: np.ndarray | float, marrow: float, cortex: float) -> np.ndarray:
    """Cross-section of a tubular bone seen side-on: faint marrow, bright cortical edges."""
    t = np.abs(dn) / half
    shell = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    edge = np.exp(-(((t - 0.9) / 0.08) ** 2)) * (t < 1.1)
    return marrow * shell + cortex * edge


def _columns(chest: Anatomy, side: Side, d0: float, d1: float) -> slice:
    """Image columns that can hold lateral distances d0..d1 on ``side`` (allowing for the rotation)."""
    margin = abs(chest.rotation[1]) * 0.75 + 2 * chest.px
    xs = (chest.params.midline + IMAGE_SIGN[side] * d0, chest.params.midline + IMAGE_SIGN[side] * d1)
    c0 = max(0, int((min(xs) - margin) * chest.size))
    c1 = min(chest.size, int(math.ceil((max(xs) + margin) * chest.size)))
    return slice(c0, max(c0, c1))


def _curve_bone(
    chest: Anatomy,
    side: Side,
    d0: float,
    d1: float,
    centre_y,
    half_height: float,
    marrow: float,
    cortex: float,
    fade: float = 0.08,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Add a curved band bone (rib, clavicle), given as y = centre_y(u) with u in [0, 1] from d0 to d1."""
    out = np.zeros_like(chest.x) if out is None else out
    ys = centre_y(np.linspace(0.0, 1.0, 33))
    rows = chest.rows(float(ys.min()) - 2 * half_height, float(ys.max()) + 2 * half_height)
    span = 0.05 * (d1 - d0)
    cols = _columns(chest, side, d0 - span, d1 + span)
    d = IMAGE_SIGN[side] * (chest.x[rows, cols] - chest.params.midline)
    u = (d - d0) / (d1 - d0)
    inside = (u > -0.05) & (u < 1.05)
    if not inside.any():
        return out
    uu = u[inside]
    yc = centre_y(uu)
    eps = 1e-3
    slope = (centre_y(uu + eps) - centre_y(uu - eps)) / (2 * eps * (d1 - d0))
    dn = (chest.y[rows, cols][inside] - yc) / np.sqrt(1.0 + slope * slope)
    near = np.abs(dn) < 1.3 * half_height
    ends = smoothstep(uu[near] / fade) * smoothstep((1.0 - uu[near]) / fade)
    block = np.zeros(d.shape, np.float32)
    block.flat[np.flatnonzero(inside)[near]] = bone_band(dn[near], half_height, marrow, cortex) * ends
    out[rows, cols] += block
    return out


def draw_bones(chest: Anatomy) -> np.ndarray:
    """Posterior and anterior ribs, clavicles, scapulae, humeral heads and the thoracic spine."""
    p = chest.params
    rng = stream(chest.seed, STREAM_ANATOMY, 7)
    ribs = np.zeros_like(chest.x)
    other = np.zeros_like(chest.x)
    for side in (Side.RIGHT, Side.LEFT):
        width = p.lung_half_width(side)
        for i in range(11):
            y0 = p.rib_top_y + i * p.rib_spacing * (1.0 + 0.03 * i) + rng.uniform(-0.004, 0.004)
            reach = width * (0.55 + 0.48 * min(1.0, i / 4.0)) + 0.025
            length = reach - 0.03
            bend = 0.7 - 0.02 * i + rng.uniform(-0.06, 0.06)
            half = p.rib_spacing * (0.17 + 0.01 * i)

            def post(u, y0=y0, length=length, bend=bend, i=i):
                if i == 0:  # the first rib is a tight arc around the apex
                    return y0 - 0.35 * length * u + 0.75 * length * u * u
                return y0 - 0.12 * length * u + bend * length * np.abs(u) ** 1.8

            _curve_bone(chest, side, 0.03, reach, post, half, 0.045, 0.13, out=ribs)
            y_end = post(1.0)

            def ant(u, y_end=y_end, reach=reach):
                # from the lateral end (u=1) medially (u=0) and downwards
                return y_end + 0.55 * np.abs(1.0 - u) ** 1.2 * (reach - 0.12)

            if i >= 1:
                _curve_bone(chest, side, 0.12, reach, ant, 0.8 * half, 0.035, 0.05, fade=0.3, out=ribs)

        def clav(u):
            return p.clavicle_y - 0.08 * np.abs(u) ** 1.3 + 0.012 * np.sin(2 * np.pi * u)

        _curve_bone(chest, side, 0.03, 0.36 * p.scale, clav, 0.015 * p.scale, 0.1, 0.09, fade=0.06, out=other)
        # Humeral head in the upper corner.
        hx = p.midline + IMAGE_SIGN[side] * (p.body_half_width - 0.02)
        hy = p.clavicle_y - 0.02
        r = np.hypot(chest.x - hx, chest.y - hy) / (0.085 * p.scale)
        other += bone_band(np.minimum(r, 1.2), 1.0, 0.2, 0.05)
        # Scapula: its medial border crosses the upper lateral lung.
        if p.scapula > 0.3:
            d = chest.lateral(side)
            border = 0.30 * p.scale + 0.10 * np.clip((chest.y - p.apex_y) / 0.35, 0, 1) ** 2
            below = (chest.y > p.apex_y - 0.04) & (chest.y < p.apex_y + 0.34)
            fade = smoothstep((p.apex_y + 0.34 - chest.y) / 0.12)
            blade = smoothstep((d - border) / (2 * chest.px)) * below * fade
            rim = np.exp(-(((d - border) / (1.5 * chest.px)) ** 2)) * below * fade
            other += p.scapula * (0.06 * blade + 0.05 * rim)
    # Below the domes the ribs run in front of and behind the thick abdomen: barely visible there.
    ribs *= 1.0 - 0.6 * smoothstep((chest.y - chest.base_dome_map) / 0.06)
    lungs = chest.lung_field(Side.RIGHT) + chest.lung_field(Side.LEFT)
    lungs = smooth(lungs * (1.0 - 0.8 * chest.heart()), 3.0 * chest.px_scale)
    ribs *= 0.4 + 0.6 * np.clip(lungs, 0.0, 1.0)
    spine = _spine(chest) * (1.0 - 0.7 * smoothstep((chest.y - chest.base_dome_map) / 0.08))
    return (ribs + other + spine).astype(np.float32)


def _spine(chest: Anatomy) -> np.ndarray:
    """Vertebral bodies with their discs and end plates, pedicles and spinous processes."""
    p = chest.params
    half = 0.036 * p.scale
    # Only the columns near the midline can hold the spine (allowing for the rotation).
    reach = half + abs(chest.rotation[1]) * 0.6 + 2 * chest.px
    c0 = max(0, int((p.midline - reach) * chest.size))
    c1 = min(chest.size, int(math.ceil((p.midline + reach) * chest.size)))
    x, y = chest.x[:, c0:c1], chest.y[:, c0:c1]
    dx = (x - p.midline) / half
    period = p.rib_spacing * 1.02
    phase = np.mod((y - p.rib_top_y + 0.01) / period, 1.0)
    body = 0.045 * np.sqrt(np.clip(1.0 - dx * dx, 0.0, 1.0)) + 0.02 * np.exp(-(((np.abs(dx) - 0.9) / 0.12) ** 2))
    disc = 1.0 - 0.3 * np.exp(-(((phase - 0.92) / 0.05) ** 2))
    endplate = 0.02 * (np.exp(-(((phase - 0.84) / 0.03) ** 2)) + np.exp(-(((phase - 0.02) / 0.03) ** 2)))
    column = body * disc + endplate * (np.abs(dx) < 1.0)
    # Pedicles: small rings on both sides of each vertebra; spinous process in the middle.
    ped = np.zeros_like(x)
    for sgn in (-1.0, 1.0):
        r = np.hypot((x - p.midline - sgn * 0.72 * half) / (0.2 * half), (phase - 0.35) / 0.13)
        ped += 0.025 * np.exp(-(((r - 0.9) / 0.3) ** 2))
    spinous = 0.025 * np.exp(-((dx / 0.18) ** 2 + ((phase - 0.62) / 0.12) ** 2))
    out = np.zeros_like(chest.x)
    out[:, c0:c1] = column + ped + spinous
    return out
