"""One phantom patient: the anatomy and acquisition parameters drawn from a study seed, and the seeded random
streams every random aspect of a study draws from.

Geometry lives in normalised image coordinates: ``x`` from 0 (image left, the PATIENT'S RIGHT) to 1, ``y``
from 0 (top) to 1. A lung's *lateral distance* ``d`` is measured from the midline towards its own side, so
one shape function serves both lungs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import numpy as np

from medsign_forensics.reports.findings import Side

#: Sides in image terms: the patient's right lung lies on the image left (-1), the left lung on the right (+1).
IMAGE_SIGN = {Side.RIGHT: -1.0, Side.LEFT: 1.0}

#: Width of the displayed chest in millimetres, used to size lesions given in mm (a typical adult thorax
#: spans about 300 mm and the lungs about 80 % of the image width).
FIELD_OF_VIEW_MM = 380.0

# Seed streams: each random aspect has its own stream so that changing one never shifts another.
STREAM_ANATOMY = 0
STREAM_VESSELS = 1
STREAM_TEXTURE = 2
STREAM_NOISE = 3

def stream(seed: int, *keys: int) -> np.random.Generator:
    """An independent random generator for one aspect of one study."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, *keys]))


@dataclass(frozen=True)
class AnatomyParams:
    """One patient: shape and position of every structure, and the acquisition (exposure, noise, blur).

    All lengths are fractions of the image side. Drawn by :func:`sample_anatomy` from the study seed and
    recorded with every study so that a render can be reproduced and audited.
    """

    midline: float
    rotation_deg: float
    body_half_width: float
    soft_tissue: float
    apex_y: float
    dome_y_right: float
    dome_y_left: float
    costophrenic_depth: float
    lung_half_width_right: float
    lung_half_width_left: float
    mediastinum_half_width: float
    heart_top_y: float
    heart_left: float
    heart_right: float
    aortic_knob_radius: float
    hilum_y_right: float
    hilum_y_left: float
    carina_y: float
    rib_top_y: float
    rib_spacing: float
    clavicle_y: float
    scapula: float
    breast: float
    arms: bool
    gastric_bubble: float
    vessel_density: float
    # acquisition
    window_low_pct: float
    window_high_pct: float
    #: How far below the darkest lung the window starts, as a fraction of the window: a wider margin gives
    #: greyer lungs and a softer film.
    window_margin: float
    black_level: float
    white_level: float
    gamma: float
    #: Shoulder of the tone curve: how strongly it compresses the brightest (densest) parts, as film does.
    shoulder: float
    edge_gain: float
    range_compression: float
    noise: float
    blur_px: float
    #: Collimated (unexposed, dark) margins: top, bottom, left, right, as fractions of the image side.
    collimation: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def dome_y(self, side: Side) -> float:
        return self.dome_y_right if side is Side.RIGHT else self.dome_y_left

    def lung_half_width(self, side: Side) -> float:
        return self.lung_half_width_right if side is Side.RIGHT else self.lung_half_width_left

    def hilum(self, side: Side) -> tuple[float, float]:
        """Hilum position (x, y) in the unrotated frame."""
        if side is Side.RIGHT:
            return self.midline - 0.105 * self.scale, self.hilum_y_right
        return self.midline + 0.095 * self.scale, self.hilum_y_left

    @property
    def scale(self) -> float:
        """Thorax size relative to an average patient (derived from the right lung's width)."""
        return self.lung_half_width_right / 0.41


def sample_anatomy(seed: int) -> AnatomyParams:
    """Draw one patient and one acquisition from the study seed."""
    rng = stream(seed, STREAM_ANATOMY)
    u = rng.uniform
    s = u(0.93, 1.05)
    apex = u(0.12, 0.18)
    dome_r = apex + s * u(0.56, 0.64)
    return AnatomyParams(
        midline=0.5 + u(-0.02, 0.02),
        rotation_deg=u(-3.0, 3.0),
        body_half_width=s * u(0.47, 0.56),
        soft_tissue=u(0.85, 1.2),
        apex_y=apex,
        dome_y_right=dome_r,
        dome_y_left=dome_r + u(0.01, 0.04),
        costophrenic_depth=s * u(0.06, 0.10),
        lung_half_width_right=0.41 * s,
        lung_half_width_left=0.41 * s * u(0.95, 1.01),
        mediastinum_half_width=s * u(0.06, 0.075),
        heart_top_y=dome_r - s * u(0.25, 0.3),
        heart_left=s * u(0.19, 0.24),
        heart_right=s * u(0.09, 0.125),
        aortic_knob_radius=s * u(0.028, 0.04),
        hilum_y_right=apex + s * u(0.27, 0.31),
        hilum_y_left=apex + s * u(0.25, 0.29),
        carina_y=apex + s * u(0.19, 0.23),
        rib_top_y=apex - s * u(0.03, 0.05),
        rib_spacing=s * u(0.053, 0.062),
        clavicle_y=apex + s * u(0.03, 0.07),
        scapula=u(0.0, 1.0),
        breast=float(u(0.0, 1.0)) if rng.uniform() < 0.5 else 0.0,
        arms=bool(rng.uniform() < 0.45),
        gastric_bubble=float(u(0.3, 1.0)) if rng.uniform() < 0.6 else 0.0,
        vessel_density=u(0.8, 1.2),
        window_low_pct=u(0.5, 3.0),
        window_high_pct=u(99.0, 99.9),
        window_margin=u(0.2, 0.95),
        black_level=u(0.0, 0.1),
        white_level=u(0.66, 0.95),
        gamma=u(1.0, 1.9),
        shoulder=u(0.2, 1.0),
        edge_gain=u(0.6, 1.4),
        range_compression=u(0.45, 0.75),
        noise=u(0.6, 1.4),
        blur_px=u(0.5, 0.9),
        collimation=cast(
            tuple[float, float, float, float],
            tuple(float(u(0.005, 0.035)) if rng.uniform() < 0.15 else 0.0 for _ in range(4)),
        ),
    )


@dataclass(frozen=True)
class LungChange:
    """A change of one lung's shape or content, used by findings that redraw the lung (emphysema)."""

    dome_drop: float = 0.0  # the dome moves down by this much (image fraction)
    dome_flatten: float = 0.0  # 0 keeps the dome's curvature, 1 makes it flat
    air_gain: float = 1.0  # more air: a hyperlucent lung
    marking_loss: float = 0.0  # fraction of peripheral vessel markings lost
