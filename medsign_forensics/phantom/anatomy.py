"""The chest of the phantom world: the density layers one patient's parameters (:mod:`.params`) draw.

Everything is drawn as *density* (a line integral of attenuation, arbitrary units): the body's soft tissue
adds, the air in the lungs and the trachea subtracts, bones, heart and vessels add. The renderer turns the
total density into a displayed radiograph. Findings are drawn by :mod:`lesions` as density changes on top of
these layers, which is why the layers are kept apart (a pneumothorax removes the vessels and the lung
texture of its rim; effusion hides them) and why a chest can be *altered* (cardiomegaly and emphysema redraw
the heart or the lungs and domes; the unchanged layers are shared).

Geometry lives in normalised image coordinates: ``x`` from 0 (image left, the PATIENT'S RIGHT) to 1, ``y``
from 0 (top) to 1. A lung's *lateral distance* ``d`` is measured from the midline towards its own side, so
one shape function serves both lungs (:mod:`.params`). The skeleton is drawn by :mod:`.skeleton`. The whole
chest may be slightly rotated: shapes are evaluated on a rotated coordinate grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property

import numpy as np
from scipy import ndimage

from medsign_forensics.phantom.params import (
    FIELD_OF_VIEW_MM,
    IMAGE_SIGN,
    STREAM_TEXTURE,
    STREAM_VESSELS,
    AnatomyParams,
    LungChange,
    stream,
)
from medsign_forensics.phantom.raster import band_noise, smoothstep, splat_lines
from medsign_forensics.phantom.skeleton import draw_bones
from medsign_forensics.reports.findings import Side

#: Density removed by a lung's full air thickness, and the strength of the fine parenchymal texture.
AIR_DENSITY = 0.42
TEXTURE_GAIN = 0.012

#: Layers that no finding redraws: an altered chest shares them with the normal one.
STATIC_LAYERS = ("bones", "trachea", "vessel_tree", "texture", "bowel", "gastric_bubble", "base_dome_map")


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
        self.rotation = (c, s)  # cos and sin of the chest's rotation

    # -- coordinates -----------------------------------------------------------------------------------

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Anatomical-frame points (N, 2) -> image pixel coordinates (column, row)."""
        c, s = self.rotation
        ax, ay = xy[:, 0] - 0.5, xy[:, 1] - 0.5
        ix = 0.5 + c * ax - s * ay
        iy = 0.5 + s * ax + c * ay
        return np.stack([ix * self.size - 0.5, iy * self.size - 0.5], axis=1)

    def rows(self, y0: float, y1: float) -> slice:
        """Image rows that can hold anatomical-frame heights y0..y1 (allowing for the rotation)."""
        margin = abs(self.rotation[1]) * 0.75 + 2 * self.px
        r0 = max(0, int((y0 - margin) * self.size))
        r1 = min(self.size, int(math.ceil((y1 + margin) * self.size)))
        return slice(r0, max(r0, r1))

    def lateral(self, side: Side) -> np.ndarray:
        """Distance from the midline towards ``side`` (negative on the other side)."""
        return IMAGE_SIGN[side] * (self.x - self.params.midline)

    def mm(self, millimetres: float) -> float:
        """A length in mm as a fraction of the image side."""
        return millimetres / FIELD_OF_VIEW_MM

    # -- lungs -----------------------------------------------------------------------------------------

    def altered(self, *, heart_scale: float = 1.0, changes: Mapping[Side, LungChange] | None = None) -> Anatomy:
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
    def base_dome_map(self) -> np.ndarray:
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
        soft = smoothstep((y - self.base_dome_map) / 0.08)
        width = np.where(x < p.midline, p.lung_half_width_right, p.lung_half_width_left)
        under_lung = smoothstep((0.97 * width - np.abs(x - p.midline)) / 0.03)
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
                cap = np.clip(1.0 - r2, 0.0, 1.0) ** 0.35 * smoothstep((y - by + 0.14) / 0.2)
                tissue = tissue + 0.18 * p.breast * cap
        return tissue.astype(np.float32)

    @cached_property
    def bones(self) -> np.ndarray:
        """Posterior and anterior ribs, clavicles, scapulae, humeral heads and the thoracic spine."""
        return draw_bones(self)

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
        rows = self.rows(0.0, cy + 0.09)
        reach = 0.1 + abs(self.rotation[1]) * 0.5
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
        below = smoothstep((self.y - self.base_dome_map - 0.04) / 0.08)
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
            vertical = (0.72 + 0.28 * smoothstep(height * 2.2)) * (1.0 - 0.18 * smoothstep((height - 0.7) / 0.4))
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
                vessels = vessels * (1.0 - change.marking_loss * smoothstep(r))
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
        band = smoothstep((p.mediastinum_half_width + 0.01 - np.abs(self.x - p.midline)) / 0.03)
        below_heart = smoothstep((self.y - self._dome_map + 0.02) / 0.04)
        total = total + 0.12 * band * smoothstep((self.y - p.apex_y + 0.05) / 0.1) * (1.0 - below_heart)
        # The aortic knob: the lung border already bulges around it.
        kx, ky = p.midline + 0.035 * p.scale, p.carina_y - 0.05
        knob = np.clip(1.0 - ((self.x - kx) ** 2 + (self.y - ky) ** 2) / (1.8 * p.aortic_knob_radius) ** 2, 0, 1)
        total = total + 0.05 * np.sqrt(knob)
        for side in (Side.RIGHT, Side.LEFT):
            total = total - AIR_DENSITY * self.lung_air(side) + self.parenchyma(side)
        return total.astype(np.float32)
