"""The chest of the phantom world: per-patient anatomy parameters and the density layers they draw.

Everything is drawn as *density* (a line integral of attenuation, arbitrary units): the body's soft tissue
adds, the air in the lungs and the trachea subtracts, bones, heart and vessels add. The renderer turns the
total density into a displayed radiograph. Findings are drawn by :mod:`lesions` as density changes on top of
these layers, which is why the layers are kept apart (a pneumothorax removes the vessels and the lung
texture of its rim; effusion hides them) and why a chest can be *altered* (cardiomegaly and emphysema redraw
the heart or the lungs and domes; the unchanged layers are shared).

Geometry lives in normalised image coordinates: ``x`` from 0 (image left, the PATIENT'S RIGHT) to 1, ``y``
from 0 (top) to 1. A lung's *lateral distance* ``d`` is measured from the midline towards its own side, so
one shape function serves both lungs. The whole chest may be slightly rotated: shapes are evaluated on a
rotated coordinate grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

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

#: Density removed by a lung's full air thickness, and the strength of the fine parenchymal texture.
AIR_DENSITY = 0.42
TEXTURE_GAIN = 0.012


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
        collimation=tuple(float(u(0.005, 0.035)) if rng.uniform() < 0.15 else 0.0 for _ in range(4)),
    )


@dataclass(frozen=True)
class LungChange:
    """A change of one lung's shape or content, used by findings that redraw the lung (emphysema)."""

    dome_drop: float = 0.0  # the dome moves down by this much (image fraction)
    dome_flatten: float = 0.0  # 0 keeps the dome's curvature, 1 makes it flat
    air_gain: float = 1.0  # more air: a hyperlucent lung
    marking_loss: float = 0.0  # fraction of peripheral vessel markings lost


def _smoothstep(t: np.ndarray) -> np.ndarray:
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


#: Layers that no finding redraws: an altered chest shares them with the normal one.
STATIC_LAYERS = ("bones", "trachea", "vessel_tree", "texture", "bowel", "gastric_bubble", "_base_dome_map")


class Anatomy:
    """The layers of one chest at one image size, and the geometry findings are placed with.

    A chest may be *altered* by findings that redraw anatomy: a heart enlarged by ``heart_scale`` and lungs
    changed by ``changes`` (emphysema). Focal findings are then drawn into the altered chest.
    """

    def __init__(
        self,
        params: AnatomyParams,
        size: int,
        seed: int,
        *,
        heart_scale: float = 1.0,
        changes: Mapping[Side, LungChange] | None = None,
    ) -> None:
        self.params = params
        self.size = size
        self.seed = seed
        self.heart_scale = heart_scale
        self.changes: dict[Side, LungChange] = dict(changes or {})
        self.px = 1.0 / size  # one pixel in normalised units
        self.px_scale = size / 256.0  # pixel lengths tuned at 256 scale by this
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        xi, yi = np.meshgrid(coords, coords)
        theta = math.radians(params.rotation_deg)
        c, s = math.cos(theta), math.sin(theta)
        # Anatomical frame: rotate image coordinates about the centre.
        self.x = (0.5 + c * (xi - 0.5) + s * (yi - 0.5)).astype(np.float32)
        self.y = (0.5 - s * (xi - 0.5) + c * (yi - 0.5)).astype(np.float32)
        self._rot = (c, s)

    # -- coordinates -----------------------------------------------------------------------------------

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Anatomical-frame points (N, 2) -> image pixel coordinates (column, row)."""
        c, s = self._rot
        ax, ay = xy[:, 0] - 0.5, xy[:, 1] - 0.5
        ix = 0.5 + c * ax - s * ay
        iy = 0.5 + s * ax + c * ay
        return np.stack([ix * self.size - 0.5, iy * self.size - 0.5], axis=1)

    def lateral(self, side: Side) -> np.ndarray:
        """Distance from the midline towards ``side`` (negative on the other side)."""
        return IMAGE_SIGN[side] * (self.x - self.params.midline)

    def mm(self, millimetres: float) -> float:
        """A length in mm as a fraction of the image side."""
        return millimetres / FIELD_OF_VIEW_MM

    # -- lungs -----------------------------------------------------------------------------------------

    def altered(self, *, heart_scale: float = 1.0, changes: Mapping[Side, LungChange] | None = None) -> "Anatomy":
        """This patient with a redrawn heart or lungs; the unchanged layers are shared, not recomputed."""
        other = Anatomy(self.params, self.size, self.seed, heart_scale=heart_scale, changes=changes)
        for name in STATIC_LAYERS:
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

    def dome(self, side: Side, d: np.ndarray, change: LungChange | None = None) -> np.ndarray:
        """The diaphragm dome's height (y) as a function of lateral distance ``d`` (``change``: emphysema)."""
        p = self.params
        width = p.lung_half_width(side)
        peak = 0.5 * width
        flat = 1.0 - (change.dome_flatten if change else 0.0)
        drop = change.dome_drop if change else 0.0
        lateral = np.clip((d - peak) / (width - peak), 0.0, 1.2) ** 2 * p.costophrenic_depth
        medial = np.clip((peak - d) / peak, 0.0, 1.0) ** 2 * 0.5 * p.costophrenic_depth
        return p.dome_y(side) + drop + flat * (lateral + medial) + (1.0 - flat) * 0.35 * lateral

    def lung_sdf(self, side: Side, x: np.ndarray | None = None, y: np.ndarray | None = None) -> np.ndarray:
        """Approximate signed distance to the lung border (positive inside), normalised units.

        The lung is the intersection of a rounded top (an ellipse whose apex sits medially), the lateral chest
        wall, the diaphragm dome and the mediastinum (which bulges around the aortic knob on the left).
        """
        p = self.params
        x = self.x if x is None else x
        y = self.y if y is None else y
        d = IMAGE_SIGN[side] * (x - p.midline)
        width = p.lung_half_width(side)
        height = p.dome_y(side) - p.apex_y
        medial0 = p.mediastinum_half_width
        full = p.apex_y + 0.6 * height
        centre = medial0 + 0.42 * (width - medial0)
        ax = np.where(d > centre, width - centre, centre - medial0)
        ry = np.minimum(y - full, 0.0) / (full - p.apex_y)
        r = np.sqrt(((d - centre) / ax) ** 2 + ry * ry)
        top = (1.0 - r) * np.minimum(ax, full - p.apex_y)
        grow = np.clip((y - full) / (p.dome_y(side) - full), 0.0, 1.0)
        lateral_edge = width * (0.96 + 0.04 * np.sin(np.pi * grow))
        medial = medial0 + 0.01 * np.exp(-(((y - p.carina_y + 0.06) / 0.05) ** 2))
        if side is Side.LEFT:
            knob_y = p.carina_y - 0.05
            medial = medial + p.aortic_knob_radius * 1.1 * np.exp(-(((y - knob_y) / (1.1 * p.aortic_knob_radius)) ** 2))
        terms = (top, lateral_edge - d, self.dome(side, d, self.changes.get(side)) - y, d - medial)
        return np.minimum.reduce(terms).astype(np.float32)

    @cached_property
    def _dome_map(self) -> np.ndarray:
        return self.dome_map(self.changes)

    @property
    def domes(self) -> np.ndarray:
        """Height (y, anatomical frame) of the diaphragm under every pixel, as this chest has it."""
        return self._dome_map

    @cached_property
    def _base_dome_map(self) -> np.ndarray:
        """The domes before any finding moved them: what the heart, ribs and bowel are placed against."""
        return self.dome_map({})

    def dome_map(self, changes: Mapping[Side, LungChange]) -> np.ndarray:
        """Height of the diaphragm under every pixel (right dome on the image left)."""
        right = self.dome(Side.RIGHT, self.lateral(Side.RIGHT), changes.get(Side.RIGHT))
        left = self.dome(Side.LEFT, self.lateral(Side.LEFT), changes.get(Side.LEFT))
        return np.where(self.x < self.params.midline, right, left).astype(np.float32)

    def lung_field(self, side: Side) -> np.ndarray:
        """Anti-aliased lung field in [0, 1] (the heart is not cut out: it overlaps the lung)."""
        return self._fields[side]

    @cached_property
    def _sdf(self) -> dict[Side, np.ndarray]:
        return {side: self.lung_sdf(side) for side in (Side.RIGHT, Side.LEFT)}

    @cached_property
    def _fields(self) -> dict[Side, np.ndarray]:
        return {
            side: np.clip(0.5 + sdf / (1.2 * self.px), 0.0, 1.0).astype(np.float32) for side, sdf in self._sdf.items()
        }

    @cached_property
    def lung_masks(self) -> dict[Side, np.ndarray]:
        """Hard lung masks, where the lung (outside the heart's shadow) is the main content of a pixel."""
        return {side: (self.lung_field(side) > 0.5) & (self.heart() < 0.5) for side in (Side.RIGHT, Side.LEFT)}

    @cached_property
    def lung_depth(self) -> dict[Side, np.ndarray]:
        """Distance to the lung border in pixels (zero outside): where a lesion fits."""
        return {side: ndimage.distance_transform_edt(mask).astype(np.float32) for side, mask in self.lung_masks.items()}

    def zone_band(self, side: Side, zone_index: int) -> tuple[float, float]:
        """The y range of the upper (0), middle (1) or lower (2) third of a lung, apex to dome peak."""
        p = self.params
        top, bottom = p.apex_y, p.dome_y(side)
        third = (bottom - top) / 3.0
        lo = top + zone_index * third
        hi = top + (zone_index + 1) * third if zone_index < 2 else bottom + p.costophrenic_depth
        return lo, hi

    # -- heart and mediastinum -------------------------------------------------------------------------

    def _heart_sdf(self, scale: float) -> np.ndarray:
        """Approximate signed distance to the cardiac silhouette (positive inside).

        The silhouette widens from the mediastinum at the level of the left atrial appendage: its right border
        (right atrium) bulges a little to the patient's right, its left border (left ventricle) sweeps out to
        the apex just above the left dome. ``scale`` enlarges it, mostly to the patient's left.
        """
        p = self.params
        m = p.mediastinum_half_width
        grow = scale - 1.0
        top = p.heart_top_y - 0.25 * grow * (p.dome_y_left - p.heart_top_y)
        t = (self.y - top) / (p.dome_y_left - top)
        left_full = m + (p.heart_left - m) * (1.0 + 1.6 * grow)
        right_full = m + (p.heart_right - m) * (1.0 + 0.8 * grow)
        rise = 1.0 - (1.0 - np.clip(t / 0.9, 0.0, 1.0)) ** 2
        left = m + (left_full - m) * rise - left_full * 0.3 * np.clip((t - 0.9) / 0.3, 0.0, None) ** 2
        rise_r = 1.0 - (1.0 - np.clip(t / 0.75, 0.0, 1.0)) ** 2
        right = m + (right_full - m) * rise_r - right_full * 0.2 * np.clip((t - 0.75) / 0.4, 0.0, None) ** 2
        dx = self.x - p.midline
        return np.minimum.reduce([left - dx, dx + right, (self.y - top)]).astype(np.float32)

    @cached_property
    def _heart_distance(self) -> np.ndarray:
        return self._heart_sdf(self.heart_scale)

    def heart(self) -> np.ndarray:
        """Anti-aliased heart silhouette in [0, 1]; it stops at the domes (below them it is abdomen)."""
        return self._heart

    @cached_property
    def _heart(self) -> np.ndarray:
        edge = self._heart_distance / (1.2 * self.px)
        above = 0.5 + (self._dome_map - self.y) / (1.2 * self.px)
        return np.clip(np.minimum(0.5 + edge, above), 0.0, 1.0).astype(np.float32)

    def heart_thickness(self) -> np.ndarray:
        """Front-to-back depth of the heart: thin at its borders, deepest centrally, deeper when enlarged."""
        depth = np.sqrt(np.clip(self._heart_distance / 0.06, 0.0, 1.0))
        return (depth * (0.85 + 0.15 * self.heart_scale)).astype(np.float32)

    # -- static layers: bones, soft tissue, vessels, texture -----------------------------------------------

    @cached_property
    def body(self) -> np.ndarray:
        """Soft-tissue thickness of the trunk, shoulders, neck, arms and breasts."""
        p = self.params
        x, y = self.x, self.y
        half = p.body_half_width * (1.0 + 0.25 * np.clip((0.22 - y) / 0.22, 0.0, 1.0))
        dx = (x - p.midline) / half
        trunk = np.sqrt(np.clip(1.0 - dx * dx, 0.0, 1.0))
        trunk = trunk * np.clip(0.5 + (1.0 - np.abs(dx)) * half / (1.5 * self.px), 0, 1)
        tissue = p.soft_tissue * (0.75 + 0.25 * trunk) * (trunk > 0)
        # Shoulder girdle muscles and the neck add thickness at the top; the abdomen is thicker than the chest.
        for sgn in (-1.0, 1.0):
            sx = p.midline + sgn * 0.36 * p.scale
            tissue = tissue + 0.35 * np.exp(-(((x - sx) / 0.14) ** 2 + ((y - p.apex_y + 0.01) / 0.1) ** 2))
        # Below the domes: liver, spleen and the thick abdomen, as dense as the heart.
        # The edge is sharp only where lung lies above it; lateral to the lungs the chest wall hides it.
        sharp = np.clip(0.5 + (y - self._dome_map) / (1.5 * self.px), 0.0, 1.0)
        soft = _smoothstep((y - self._base_dome_map) / 0.08)
        width = np.where(x < p.midline, p.lung_half_width_right, p.lung_half_width_left)
        under_lung = _smoothstep((0.97 * width - np.abs(x - p.midline)) / 0.03)
        tissue = tissue + 0.3 * (under_lung * sharp + (1.0 - under_lung) * soft) * trunk
        if p.arms:
            for sgn in (-1.0, 1.0):
                ax = p.midline + sgn * (p.body_half_width + 0.055)
                adx = (x - ax) / 0.05
                tissue = tissue + 0.7 * np.sqrt(np.clip(1.0 - adx * adx, 0.0, 1.0)) * (y > p.apex_y + 0.05)
        if p.breast > 0:
            for sgn in (-1.0, 1.0):
                bx = p.midline + sgn * 0.25 * p.scale
                by = p.dome_y_right - 0.07
                r2 = ((x - bx) / (0.2 * p.scale)) ** 2 + ((y - by) / (0.14 * p.scale)) ** 2
                # Thickest low down, fading upwards into the chest wall; the lower edge stays fairly sharp.
                cap = np.clip(1.0 - r2, 0.0, 1.0) ** 0.35 * _smoothstep((y - by + 0.14) / 0.2)
                tissue = tissue + 0.18 * p.breast * cap
        return tissue.astype(np.float32)

    def _bone_band(self, dn: np.ndarray, half: np.ndarray | float, marrow: float, cortex: float) -> np.ndarray:
        """Cross-section of a tubular bone seen side-on: faint marrow, bright cortical edges."""
        t = np.abs(dn) / half
        shell = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
        edge = np.exp(-(((t - 0.9) / 0.08) ** 2)) * (t < 1.1)
        return marrow * shell + cortex * edge

    def _window(self, y0: float, y1: float) -> slice:
        """Image rows that can hold anatomical-frame heights y0..y1 (allowing for the rotation)."""
        margin = abs(self._rot[1]) * 0.75 + 2 * self.px
        r0 = max(0, int((y0 - margin) * self.size))
        r1 = min(self.size, int(math.ceil((y1 + margin) * self.size)))
        return slice(r0, max(r0, r1))

    def _columns(self, side: Side, d0: float, d1: float) -> slice:
        """Image columns that can hold lateral distances d0..d1 on ``side`` (allowing for the rotation)."""
        margin = abs(self._rot[1]) * 0.75 + 2 * self.px
        xs = (self.params.midline + IMAGE_SIGN[side] * d0, self.params.midline + IMAGE_SIGN[side] * d1)
        c0 = max(0, int((min(xs) - margin) * self.size))
        c1 = min(self.size, int(math.ceil((max(xs) + margin) * self.size)))
        return slice(c0, max(c0, c1))

    def _curve_bone(
        self,
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
        out = np.zeros_like(self.x) if out is None else out
        ys = centre_y(np.linspace(0.0, 1.0, 33))
        rows = self._window(float(ys.min()) - 2 * half_height, float(ys.max()) + 2 * half_height)
        span = 0.05 * (d1 - d0)
        cols = self._columns(side, d0 - span, d1 + span)
        d = IMAGE_SIGN[side] * (self.x[rows, cols] - self.params.midline)
        u = (d - d0) / (d1 - d0)
        inside = (u > -0.05) & (u < 1.05)
        if not inside.any():
            return out
        uu = u[inside]
        yc = centre_y(uu)
        eps = 1e-3
        slope = (centre_y(uu + eps) - centre_y(uu - eps)) / (2 * eps * (d1 - d0))
        dn = (self.y[rows, cols][inside] - yc) / np.sqrt(1.0 + slope * slope)
        near = np.abs(dn) < 1.3 * half_height
        ends = _smoothstep(uu[near] / fade) * _smoothstep((1.0 - uu[near]) / fade)
        block = np.zeros(d.shape, np.float32)
        block.flat[np.flatnonzero(inside)[near]] = self._bone_band(dn[near], half_height, marrow, cortex) * ends
        out[rows, cols] += block
        return out

    @cached_property
    def bones(self) -> np.ndarray:
        """Posterior and anterior ribs, clavicles, scapulae, humeral heads and the thoracic spine."""
        p = self.params
        rng = stream(self.seed, STREAM_ANATOMY, 7)
        ribs = np.zeros_like(self.x)
        other = np.zeros_like(self.x)
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

                self._curve_bone(side, 0.03, reach, post, half, 0.045, 0.13, out=ribs)
                y_end = post(1.0)

                def ant(u, y_end=y_end, reach=reach):
                    # from the lateral end (u=1) medially (u=0) and downwards
                    return y_end + 0.55 * np.abs(1.0 - u) ** 1.2 * (reach - 0.12)

                if i >= 1:
                    self._curve_bone(side, 0.12, reach, ant, 0.8 * half, 0.035, 0.05, fade=0.3, out=ribs)

            def clav(u):
                return p.clavicle_y - 0.08 * np.abs(u) ** 1.3 + 0.012 * np.sin(2 * np.pi * u)

            self._curve_bone(side, 0.03, 0.36 * p.scale, clav, 0.015 * p.scale, 0.1, 0.09, fade=0.06, out=other)
            # Humeral head in the upper corner.
            hx = p.midline + IMAGE_SIGN[side] * (p.body_half_width - 0.02)
            hy = p.clavicle_y - 0.02
            r = np.hypot(self.x - hx, self.y - hy) / (0.085 * p.scale)
            other += self._bone_band(np.minimum(r, 1.2), 1.0, 0.2, 0.05)
            # Scapula: its medial border crosses the upper lateral lung.
            if p.scapula > 0.3:
                d = self.lateral(side)
                border = 0.30 * p.scale + 0.10 * np.clip((self.y - p.apex_y) / 0.35, 0, 1) ** 2
                below = (self.y > p.apex_y - 0.04) & (self.y < p.apex_y + 0.34)
                fade = _smoothstep((p.apex_y + 0.34 - self.y) / 0.12)
                blade = _smoothstep((d - border) / (2 * self.px)) * below * fade
                rim = np.exp(-(((d - border) / (1.5 * self.px)) ** 2)) * below * fade
                other += p.scapula * (0.06 * blade + 0.05 * rim)
        # Below the domes the ribs run in front of and behind the thick abdomen: barely visible there.
        ribs *= 1.0 - 0.6 * _smoothstep((self.y - self._base_dome_map) / 0.06)
        lungs = self.lung_field(Side.RIGHT) + self.lung_field(Side.LEFT)
        lungs = smooth(lungs * (1.0 - 0.8 * self.heart()), 3.0 * self.px_scale)
        ribs *= 0.4 + 0.6 * np.clip(lungs, 0.0, 1.0)
        spine = self._spine() * (1.0 - 0.7 * _smoothstep((self.y - self._base_dome_map) / 0.08))
        return (ribs + other + spine).astype(np.float32)

    def _spine(self) -> np.ndarray:
        p = self.params
        half = 0.036 * p.scale
        # Only the columns near the midline can hold the spine (allowing for the rotation).
        reach = half + abs(self._rot[1]) * 0.6 + 2 * self.px
        c0 = max(0, int((p.midline - reach) * self.size))
        c1 = min(self.size, int(math.ceil((p.midline + reach) * self.size)))
        x, y = self.x[:, c0:c1], self.y[:, c0:c1]
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
        out = np.zeros_like(self.x)
        out[:, c0:c1] = column + ped + spinous
        return out

    @cached_property
    def trachea(self) -> np.ndarray:
        """Air in the trachea and main bronchi (a negative density)."""
        p = self.params
        tx = p.midline - 0.004
        cy = p.carina_y
        segs = np.array(
            [
                [[tx, p.apex_y - 0.08], [tx, cy]],
                [[tx, cy], [tx - 0.055, cy + 0.075]],
                [[tx, cy], [tx + 0.075, cy + 0.065]],
            ]
        )
        widths = np.array([0.024, 0.016, 0.014]) * p.scale
        rows = self._window(0.0, cy + 0.09)
        reach = 0.1 + abs(self._rot[1]) * 0.5
        cols = slice(max(0, int((tx - reach) * self.size)), min(self.size, int((tx + reach) * self.size) + 1))
        x, y = self.x[rows, cols], self.y[rows, cols]
        part = np.zeros(x.shape, np.float32)
        for (a, b), w in zip(segs, widths, strict=True):
            ab = b - a
            t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab), 0.0, 1.0)
            dist = np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1])
            part = np.maximum(part, np.sqrt(np.clip(1.0 - (dist / w) ** 2, 0.0, 1.0)))
        air = np.zeros_like(self.x)
        air[rows, cols] = part
        return air

    @cached_property
    def vessel_tree(self) -> np.ndarray:
        """Pulmonary vessel markings of both lungs before clipping to the lung fields.

        A tree grows from each hilum: trunks fan out from upward to downward, every branch splits in two with
        a narrower, shorter pair, so markings are thick at the hila and fade to nothing at the periphery. The
        trees grow outwards, away from the mediastinum, so both share one layer (clipped per lung later).
        """
        p = self.params
        rng = stream(self.seed, STREAM_VESSELS)
        segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        hilar = np.zeros_like(self.x)
        for side in (Side.RIGHT, Side.LEFT):
            sgn = IMAGE_SIGN[side]
            hx, hy = p.hilum(side)
            n_trunks = 10
            angles = np.linspace(-1.3, 1.4, n_trunks) + rng.uniform(-0.1, 0.1, n_trunks)
            # Trunks leave from around the hilum, not from one point, so the hilum reads as a knot of vessels
            # rather than a star.
            origins = np.stack([hx + sgn * 0.015 * np.cos(angles), hy + 0.03 * np.sin(angles)], 1)
            origins = origins + rng.normal(0.0, 0.008, origins.shape)
            lengths = 0.055 * p.scale * rng.uniform(0.8, 1.2, n_trunks)
            widths = np.full(n_trunks, 0.015 * p.scale)
            all_starts, all_ends, all_widths = [], [], []
            for depth in range(8):
                ends = origins + lengths[:, None] * np.stack([sgn * np.cos(angles), np.sin(angles)], 1)
                all_starts.append(origins)
                all_ends.append(ends)
                # Gravity: lower-zone vessels are fuller than upper-zone ones in an upright patient.
                all_widths.append(widths * (1.0 + 0.15 * np.sin(angles)))
                n = len(angles)
                spread = rng.uniform(0.25, 0.5, n) * rng.uniform(0.6, 1.1, (2, n))
                bias = rng.uniform(-0.15, 0.15, n)
                keep = rng.uniform(size=(2, n)) < np.array([[0.95], [0.8]]) * p.vessel_density
                if depth < 3:
                    keep[:] = True
                children = [(keep[k], angles + sgn_b * spread[k] + bias) for k, sgn_b in enumerate((-1.0, 1.0))]
                origins = np.concatenate([ends[k] for k, _ in children])
                angles = np.concatenate([a[k] for k, a in children])
                parent = np.concatenate([np.flatnonzero(k) for k, _ in children])
                lengths = lengths[parent] * rng.uniform(0.7, 0.88, len(parent))
                widths = widths[parent] * rng.uniform(0.68, 0.8, len(parent))
            segments.append((np.concatenate(all_starts), np.concatenate(all_ends), np.concatenate(all_widths)))
            hilar += np.exp(-(((self.x - hx) / 0.04) ** 2 + ((self.y - hy) / 0.06) ** 2))
        starts, ends, widths = (np.concatenate(parts) for parts in zip(*segments, strict=True))
        # Vessels are not straight: bend every segment at a midpoint pushed sideways by up to a sixth of its length.
        normal = np.stack([-(ends - starts)[:, 1], (ends - starts)[:, 0]], 1)
        middle = 0.5 * (starts + ends) + normal * rng.uniform(-0.17, 0.17, (len(starts), 1))
        starts, ends = np.concatenate([starts, middle]), np.concatenate([middle, ends])
        widths = np.concatenate([widths, widths])
        amp = 0.085 * (widths / (0.015 * p.scale)) ** 0.8 * p.vessel_density
        shape = (self.size, self.size)
        tree = splat_lines(shape, self.to_pixels(starts), self.to_pixels(ends), widths * self.size, amp)
        return (tree + 0.05 * hilar).astype(np.float32)

    @cached_property
    def texture(self) -> np.ndarray:
        """Fine parenchymal texture (overlapping small vessels and septa) as zero-mean band-pass noise."""
        rng = stream(self.seed, STREAM_TEXTURE)
        shape = (self.size, self.size)
        fine = band_noise(rng, shape, 0.7 * self.px_scale, 2.2 * self.px_scale)
        mid = band_noise(rng, shape, 1.6 * self.px_scale, 5.0 * self.px_scale)
        return (0.6 * fine + 0.4 * mid).astype(np.float32)

    @cached_property
    def bowel(self) -> np.ndarray:
        """Mottled bowel gas and stool below the domes (a negative density), faint and coarse."""
        rng = stream(self.seed, STREAM_TEXTURE, 1)
        mottle = band_noise(rng, (self.size, self.size), 4.0 * self.px_scale, 14.0 * self.px_scale)
        below = _smoothstep((self.y - self._base_dome_map - 0.04) / 0.08)
        return (np.clip(mottle, 0.0, None) * below).astype(np.float32)

    @cached_property
    def gastric_bubble(self) -> np.ndarray:
        p = self.params
        if p.gastric_bubble <= 0:
            return np.zeros_like(self.x)
        gx = p.midline + 0.17 * p.scale
        gy = p.dome_y_left + 0.045
        r2 = ((self.x - gx) / 0.065) ** 2 + ((self.y - gy) / 0.035) ** 2
        return (p.gastric_bubble * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))).astype(np.float32)

    # -- composition -----------------------------------------------------------------------------------

    def lung_air(self, side: Side) -> np.ndarray:
        """Air thickness of one lung: thin at the borders, thickest centrally; partly hidden by the heart."""
        return self._air[side]

    @cached_property
    def _air(self) -> dict[Side, np.ndarray]:
        p = self.params
        out = {}
        cover = 1.0 - 0.8 * self.heart()
        for side in (Side.RIGHT, Side.LEFT):
            sdf = self._sdf[side]
            field = self.lung_field(side)
            depth = np.clip(sdf / (0.06 * p.scale), 0.0, 1.0) ** 0.55
            # Lower zones are deeper front-to-back; the apices are thin and crowded by bones and muscle, and
            # the bases overlap the posterior recesses and the breasts.
            height = np.clip((self.y - p.apex_y) / (p.dome_y(side) - p.apex_y), 0.0, 1.0)
            vertical = (0.72 + 0.28 * _smoothstep(height * 2.2)) * (1.0 - 0.18 * _smoothstep((height - 0.7) / 0.4))
            change = self.changes.get(side)
            gain = change.air_gain if change else 1.0
            out[side] = (field * depth * vertical * cover * gain).astype(np.float32)
        return out

    def parenchyma(self, side: Side) -> np.ndarray:
        """What a lung shows besides its air: vessel markings and fine texture (hidden by fluid, absent from a
        pneumothorax rim)."""
        return self.markings(side) + TEXTURE_GAIN * self.texture * self.lung_air(side)

    def markings(self, side: Side) -> np.ndarray:
        """Vessel markings visible in one lung (fainter behind the heart, sparse in emphysema)."""
        return self._markings[side]

    @cached_property
    def _markings(self) -> dict[Side, np.ndarray]:
        out = {}
        behind_heart = 1.0 - 0.55 * self.heart()
        for side in (Side.RIGHT, Side.LEFT):
            vessels = self.vessel_tree
            change = self.changes.get(side)
            if change is not None and change.marking_loss > 0:
                hx, hy = self.params.hilum(side)
                r = np.hypot(self.x - hx, self.y - hy) / 0.28
                vessels = vessels * (1.0 - change.marking_loss * _smoothstep(r))
            out[side] = (vessels * self.lung_field(side) * behind_heart).astype(np.float32)
        return out

    @cached_property
    def density(self) -> np.ndarray:
        """Total density of this chest."""
        p = self.params
        total = self.body + self.bones - 0.015 * self.bowel
        total = total - 0.07 * self.trachea - 0.12 * self.gastric_bubble
        total = total + 0.03 * self.heart_thickness() * self.heart()
        # Great vessels, oesophagus and thymus make the upper mediastinum as dense as the heart.
        band = _smoothstep((p.mediastinum_half_width + 0.01 - np.abs(self.x - p.midline)) / 0.03)
        below_heart = _smoothstep((self.y - self._dome_map + 0.02) / 0.04)
        total = total + 0.12 * band * _smoothstep((self.y - p.apex_y + 0.05) / 0.1) * (1.0 - below_heart)
        # The aortic knob: the lung border already bulges around it.
        kx, ky = p.midline + 0.035 * p.scale, p.carina_y - 0.05
        knob = np.clip(1.0 - ((self.x - kx) ** 2 + (self.y - ky) ** 2) / (1.8 * p.aortic_knob_radius) ** 2, 0, 1)
        total = total + 0.05 * np.sqrt(knob)
        for side in (Side.RIGHT, Side.LEFT):
            total = total - AIR_DENSITY * self.lung_air(side) + self.parenchyma(side)
        return total.astype(np.float32)
