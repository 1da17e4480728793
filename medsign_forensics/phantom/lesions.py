"""Findings drawn into the phantom chest, each as a density change with its own exact mask.

Every finding becomes a :class:`Lesion`: a density change that is zero outside its boolean mask, so the mask is
exactly the region the pathology changed. Where a finding redraws anatomy (cardiomegaly enlarges the heart,
emphysema flattens the domes and darkens the lungs) the change is the difference between the redrawn and the
normal chest, confined to the redrawn structure.

Placement follows the report: side (patient's side; the patient's right is the image left), zone (thirds of
the lung from apex to dome) and severity (size or extent); :mod:`.placement` resolves what the report leaves
open and calls the drawers here (:data:`DRAWERS`).

Mask conventions worth knowing:

* cardiomegaly: the whole enlarged heart silhouette above the domes (not only the added rim), because that is
  the structure a reader judges; inside the normal heart's outline the change is small (a denser heart);
* pneumothorax: the pleural air rim (apical and lateral, where air collects upright) plus the visceral
  pleural line; the collapsed lung inside the line is left as it was;
* effusion: the hemithorax below the meniscus; edema: perihilar haze and Kerley B lines in each lung;
* emphysema: the whole redrawn lung field (including what the lowered dome uncovered).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsign_forensics.phantom.anatomy import AIR_DENSITY, Anatomy
from medsign_forensics.phantom.params import IMAGE_SIGN, LungChange
from medsign_forensics.phantom.raster import band_noise, splat_lines
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone

ZONES = (Zone.UPPER, Zone.MIDDLE, Zone.LOWER)


@dataclass(frozen=True)
class Lesion:
    """A drawn finding: its resolved description, its density change and its mask (same shape)."""

    finding: Finding
    delta: np.ndarray
    mask: np.ndarray
    #: Set when the finding redraws anatomy (a bigger heart; hyperinflated lungs): the other findings are then
    #: drawn into the redrawn chest, and the change is processed exactly like the chest around it, so no seam
    #: appears where it meets unchanged anatomy.
    heart_scale: float | None = None
    lung_changes: Mapping[Side, LungChange] | None = None
    #: Share of the chest's range compression this change gets when developed. A reader's equalisation
    #: flattens large smooth shapes; at full strength it would hollow a mass or a consolidation into a bright
    #: ring, which real films do not show. Redrawn anatomy, and fluid that merges with the abdomen, get the
    #: chest's full processing so that they show no seam against it.
    compression: float = 0.3

    @property
    def anatomical(self) -> bool:
        return self.heart_scale is not None or self.lung_changes is not None


# -- helpers ----------------------------------------------------------------------------------------------


def _sides(finding: Finding) -> tuple[Side, ...]:
    return (Side.RIGHT, Side.LEFT) if finding.side is Side.BILATERAL else (finding.side,)


Range = tuple[float, float]


def _level(severity: Severity, mild: Range, moderate: Range, severe: Range, rng: np.random.Generator) -> float:
    """A size drawn within the severity's range; the ranges do not overlap, so severity orders size."""
    lo, hi = {Severity.MILD: mild, Severity.MODERATE: moderate, Severity.SEVERE: severe}[severity]
    return float(rng.uniform(lo, hi))


def _zone_index(zone: Zone) -> int:
    return ZONES.index(zone)


def _pick_centre(
    anatomy: Anatomy, side: Side, zone: Zone, radius: float, rng: np.random.Generator
) -> tuple[float, float]:
    """A point of the lung in the zone, as deep inside the lung as the lesion's radius allows."""
    lo, hi = anatomy.zone_band(side, _zone_index(zone))
    in_zone = anatomy.lung_masks[side] & (anatomy.y >= lo) & (anatomy.y < hi)
    depth = anatomy.lung_depth[side] / anatomy.size
    if not in_zone.any():
        in_zone = anatomy.lung_masks[side]
    available = depth[in_zone]
    need = min(radius * 0.9, 0.7 * float(available.max()))
    candidates = np.flatnonzero(in_zone & (depth >= need))
    index = int(rng.choice(candidates))
    return float(anatomy.x.flat[index]), float(anatomy.y.flat[index])


def _box(anatomy: Anatomy, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
    """Image rows and columns that hold a disc of ``radius`` (anatomical frame) around (cx, cy)."""
    (col, row), = anatomy.to_pixels(np.array([[cx, cy]]))
    r = radius * anatomy.size + 3
    n = anatomy.size
    return (
        slice(max(0, int(row - r)), min(n, int(math.ceil(row + r)) + 1)),
        slice(max(0, int(col - r)), min(n, int(math.ceil(col + r)) + 1)),
    )


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], anatomy: Anatomy, fine: float, coarse: float
) -> np.ndarray:
    if min(shape) < 2:
        return np.zeros(shape, np.float32)
    return band_noise(rng, shape, fine * anatomy.px_scale, coarse * anatomy.px_scale)


def _empty(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((anatomy.size, anatomy.size), np.float32), np.zeros((anatomy.size, anatomy.size), bool)


def _finish(finding: Finding, delta: np.ndarray, mask: np.ndarray, **alteration: Any) -> Lesion:
    """Confine the change to the mask, so that nothing outside the mask differs from the normal chest."""
    return Lesion(finding, np.where(mask, delta, 0.0).astype(np.float32), mask, **alteration)


def _blob(
    anatomy: Anatomy,
    finding: Finding,
    rng: np.random.Generator,
    diameter_mm: tuple[Range, Range, Range],
    amplitude: float,
    lobes: int,
    texture: float,
) -> Lesion:
    """Round lesions (nodule, mass, calcified granuloma): a projected sphere, or several for a lobulated mass."""
    delta, mask = _empty(anatomy)
    for side in _sides(finding):
        radius = anatomy.mm(_level(finding.severity, *diameter_mm, rng)) / 2.0
        radius = max(radius, 1.2 / anatomy.size)
        cx, cy = _pick_centre(anatomy, side, finding.zone, radius, rng)
        rows, cols = _box(anatomy, cx, cy, radius * 1.3)
        x, y = anatomy.x[rows, cols], anatomy.y[rows, cols]
        thickness: np.ndarray = np.zeros(x.shape, np.float32)
        parts = [(cx, cy, radius)]
        for _ in range(lobes - 1):
            angle = rng.uniform(0, 2 * math.pi)
            off = radius * rng.uniform(0.25, 0.5)
            parts.append((cx + off * math.cos(angle), cy + off * math.sin(angle), radius * rng.uniform(0.45, 0.7)))
        for px, py, r in parts:
            theta = np.arctan2(y - py, x - px)
            phase3, phase5 = rng.uniform(0, 2 * math.pi, 2)
            wobble = 1.0 + 0.07 * np.sin(3 * theta + phase3) + 0.04 * np.sin(5 * theta + phase5)
            rho = np.hypot(x - px, y - py) / (r * wobble)
            # Lobes add up (a smooth union), so a lobulated mass has no internal seams.
            thickness += np.clip(1.0 - rho * rho, 0.0, 1.0) * (r / radius)
        thickness = np.minimum(thickness, 1.0) ** 0.6
        grain = _texture(rng, x.shape, anatomy, 0.9, 4.0)
        local = amplitude * thickness * (1.0 + texture * grain)
        delta[rows, cols] += np.maximum(local, 0.0) * (thickness > 0)
        mask[rows, cols] |= thickness > 0
    return _finish(finding, delta, mask)


# -- the findings ---------------------------------------------------------------------------------------


def draw_nodule(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """A small round opacity of 5-15 mm with a faint granular interior."""
    return _blob(anatomy, finding, rng, ((5.0, 8.0), (8.0, 11.0), (11.0, 15.0)), 0.28, 1, 0.12)


def draw_mass(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """A lobulated opacity over 3 cm, denser than a nodule, with a heterogeneous interior."""
    return _blob(anatomy, finding, rng, ((30.0, 42.0), (42.0, 58.0), (58.0, 80.0)), 0.32, 5, 0.07)


def draw_granuloma(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """A tiny, very dense (calcified) focus of 2-7 mm."""
    return _blob(anatomy, finding, rng, ((2.0, 3.5), (3.5, 5.0), (5.0, 7.0)), 0.75, 1, 0.1)


def _bronchograms(
    anatomy: Anatomy, side: Side, cx: float, cy: float, reach: float, rng: np.random.Generator
) -> np.ndarray:
    """Branching air-filled bronchi, running from the hilum's side of a consolidation outwards."""
    hx, hy = anatomy.params.hilum(side)
    base = math.atan2(cy - hy, cx - hx)
    starts, ends, widths = [], [], []
    stack = [(np.array([cx, cy]) - 0.6 * reach * np.array([math.cos(base), math.sin(base)]), base, 0.45 * reach,
              anatomy.mm(4.5), 0)]
    while stack:
        origin, angle, length, width, depth = stack.pop()
        end = origin + length * np.array([math.cos(angle), math.sin(angle)])
        starts.append(origin)
        ends.append(end)
        widths.append(width)
        if depth < 3:
            for sgn in (-1.0, 1.0):
                stack.append((end, angle + sgn * rng.uniform(0.25, 0.6), length * 0.7, width * 0.75, depth + 1))
    s = anatomy.to_pixels(np.array(starts))
    e = anatomy.to_pixels(np.array(ends))
    w = np.maximum(np.array(widths) * anatomy.size, 1.2)
    return np.clip(splat_lines((anatomy.size, anatomy.size), s, e, w, np.ones(len(widths))), 0.0, 1.0)


def draw_consolidation(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Patchy airspace filling of part of a lobe, with air bronchograms, stopping at the lung's border."""
    delta, mask = _empty(anatomy)
    shape = (anatomy.size, anatomy.size)
    for side in _sides(finding):
        reach = _level(finding.severity, (0.045, 0.065), (0.075, 0.1), (0.11, 0.15), rng)
        cx, cy = _pick_centre(anatomy, side, finding.zone, 0.5 * reach, rng)
        rx, ry = reach * rng.uniform(0.85, 1.2), reach * rng.uniform(0.7, 1.05)
        envelope = 1.0 - ((anatomy.x - cx) / rx) ** 2 - ((anatomy.y - cy) / ry) ** 2
        # Fluffy, ill-defined airspace filling: coarse patches with softer fine structure on top.
        patchy = 0.45 * band_noise(rng, shape, 3.0 * anatomy.px_scale, 12.0 * anatomy.px_scale)
        patchy += 0.55 * band_noise(rng, shape, 6.0 * anatomy.px_scale, 24.0 * anatomy.px_scale)
        level = envelope + 0.4 * patchy
        inside = (level > 0.1) & anatomy.lung_masks[side]
        fill = np.clip((level - 0.1) / 0.7, 0.0, 1.0) ** 1.2
        bronchi = _bronchograms(anatomy, side, cx, cy, reach, rng)
        grain = band_noise(rng, shape, 0.6 * anatomy.px_scale, 2.0 * anatomy.px_scale)
        air = anatomy.lung_air(side)
        local = (AIR_DENSITY * air * 0.6 + 0.03) * fill * (1.0 - 0.6 * bronchi) * (1.0 + 0.08 * grain)
        delta += np.where(inside, np.maximum(local, 0.0), 0.0)
        mask |= inside
    return _finish(finding, delta, mask)


def draw_atelectasis(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Mild: plate-like (discoid) bands. Moderate and severe: a collapsed segment or lobe, a dense wedge
    pointing at the hilum (the collapsed lobe's lost air is its volume loss)."""
    delta, mask = _empty(anatomy)
    shape = (anatomy.size, anatomy.size)
    for side in _sides(finding):
        lung = anatomy.lung_masks[side]
        if finding.severity is Severity.MILD:
            length = rng.uniform(0.06, 0.1)
            cx, cy = _pick_centre(anatomy, side, finding.zone, 0.4 * length, rng)
            half = anatomy.mm(rng.uniform(2.0, 3.0))
            angle = math.radians(rng.uniform(-15, 15)) * -IMAGE_SIGN[side]
            along = (anatomy.x - cx) * math.cos(angle) + (anatomy.y - cy) * math.sin(angle)
            across = -(anatomy.x - cx) * math.sin(angle) + (anatomy.y - cy) * math.cos(angle)
            taper = np.sqrt(np.clip(1.0 - (2 * along / length) ** 2, 0.0, 1.0))
            width = np.maximum(half * taper, 1e-6)
            thickness = np.sqrt(np.clip(1.0 - (across / width) ** 2, 0.0, 1.0)) * (taper > 0)
            inside = (thickness > 0) & lung
            grain = band_noise(rng, shape, 0.6 * anatomy.px_scale, 2.0 * anatomy.px_scale)
            local = 0.22 * thickness * (1.0 + 0.15 * grain)
        else:
            hx, hy = anatomy.params.hilum(side)
            lo, hi = anatomy.zone_band(side, _zone_index(finding.zone))
            target_y = 0.5 * (lo + hi)
            target_x = hx + IMAGE_SIGN[side] * 0.12
            direction = math.atan2(target_y - hy, target_x - hx)
            spread = math.radians(_level(finding.severity, (0, 0), (12.0, 18.0), (20.0, 28.0), rng))
            dx, dy = anatomy.x - hx, anatomy.y - hy
            off = np.angle(np.exp(1j * (np.arctan2(dy, dx) - direction)))
            radial = np.hypot(dx, dy)
            wedge = np.clip(1.0 - np.abs(off) / spread, 0.0, 1.0)
            inside = (wedge > 0) & (radial > 0.03) & lung
            air = anatomy.lung_air(side)
            grain = band_noise(rng, shape, 1.0 * anatomy.px_scale, 5.0 * anatomy.px_scale)
            local = (AIR_DENSITY * air * 0.7 + 0.04) * np.sqrt(wedge) * (1.0 + 0.04 * grain)
        delta += np.where(inside, np.maximum(local, 0.0), 0.0)
        mask |= inside
    return _finish(finding, delta, mask)


def draw_effusion(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Dependent fluid: fills the costophrenic angle first, with a meniscus that climbs the lateral wall."""
    delta, mask = _empty(anatomy)
    p = anatomy.params
    shape = (anatomy.size, anatomy.size)
    for side in _sides(finding):
        height = p.dome_y(side) - p.apex_y
        rise = _level(finding.severity, (0.06, 0.12), (0.2, 0.3), (0.4, 0.58), rng)
        lateral_level = p.dome_y(side) + p.costophrenic_depth - rise * height
        d = np.clip(anatomy.lateral(side) / p.lung_half_width(side), 0.0, 1.0)
        # The meniscus is flat medially and climbs steeply along the lateral chest wall.
        climb = rng.uniform(0.08, 0.13)
        meniscus = lateral_level + climb * (1.0 - d**2)
        depth = anatomy.y - meniscus
        field = anatomy.lung_field(side)
        inside = (depth > 0) & (field > 0.02) & (anatomy.lateral(side) > 0)
        fill = np.clip(depth / 0.05, 0.0, 1.0) ** 0.8
        air = anatomy.lung_air(side)
        ripple = 1.0 + 0.03 * band_noise(rng, shape, 1.0 * anatomy.px_scale, 6.0 * anatomy.px_scale)
        # Fluid replaces the air and hides the lung markings behind it: a homogeneous, soft-tissue density.
        hidden = 0.85 * anatomy.parenchyma(side)
        local = fill * ((AIR_DENSITY * air + 0.2 * field) * ripple - hidden)
        delta += np.where(inside, local, 0.0)
        mask |= inside
    return _finish(finding, delta, mask, compression=1.0)


def draw_pneumothorax(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Pleural air: a lucent apical and lateral rim without lung markings, bounded by the visceral pleural line.

    The collapsed lung is the lung shrunk towards the hilum's column at the level of the dome, so the rim is
    widest at the apex and along the lateral wall, where air collects in an upright patient.
    """
    delta, mask = _empty(anatomy)
    p = anatomy.params
    for side in _sides(finding):
        keep = _level(finding.severity, (0.9, 0.94), (0.8, 0.86), (0.62, 0.72), rng)
        ax, ay = p.hilum(side)[0], p.dome_y(side)
        collapsed = anatomy.lung_sdf(side, x=ax + (anatomy.x - ax) / keep, y=ay + (anatomy.y - ay) / keep) * keep
        field = anatomy.lung_field(side)
        line_half = 0.9 * anatomy.px
        rim = (collapsed < 0) & (field > 0.02) & (anatomy.heart() < 0.5)
        line = np.exp(-((collapsed / line_half) ** 2)) * (field > 0.5)
        inside = rim | (line > 0.05)
        removed = anatomy.parenchyma(side)
        local = np.where(rim, -removed - 0.08 * field, 0.0) + 0.07 * line
        delta += np.where(inside, local, 0.0)
        mask |= inside
    return _finish(finding, delta, mask)


def draw_cardiomegaly(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """An enlarged heart (mostly to the patient's left, the image right); the mask is the whole silhouette."""
    scale = _level(finding.severity, (1.12, 1.18), (1.2, 1.28), (1.3, 1.4), rng)
    enlarged = anatomy.altered(heart_scale=scale)
    silhouette = enlarged.heart() > 0.02
    return _finish(finding, enlarged.density - anatomy.density, silhouette, heart_scale=scale, compression=1.0)


def draw_edema(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Perihilar (bat-wing) haze that grows with severity, and Kerley B lines at the lateral bases."""
    delta, mask = _empty(anatomy)
    shape = (anatomy.size, anatomy.size)
    p = anatomy.params
    strength = _level(finding.severity, (0.18, 0.26), (0.3, 0.42), (0.5, 0.65), rng)
    reach = {Severity.MILD: 0.1, Severity.MODERATE: 0.14, Severity.SEVERE: 0.19}[finding.severity]
    for side in _sides(finding):
        hx, hy = p.hilum(side)
        r = np.hypot((anatomy.x - hx) / reach, (anatomy.y - hy) / (1.3 * reach))
        fluffy = band_noise(rng, shape, 3.0 * anatomy.px_scale, 12.0 * anatomy.px_scale)
        level = np.exp(-r * r) * (1.0 + 0.35 * fluffy)
        haze = np.clip((level - 0.25) / 0.75, 0.0, 1.0)
        field = anatomy.lung_field(side)
        air = anatomy.lung_air(side)
        haze_delta = strength * AIR_DENSITY * air * haze
        # Kerley B lines: short horizontal septal lines reaching the lateral pleura above the costophrenic angle.
        n_lines = {Severity.MILD: 5, Severity.MODERATE: 8, Severity.SEVERE: 11}[finding.severity]
        width = p.lung_half_width(side)
        ys = p.dome_y(side) - rng.uniform(0.0, 0.14, n_lines)
        lengths = rng.uniform(0.015, 0.03, n_lines)
        edge = width * 0.95 - 0.006
        starts = np.stack([p.midline + IMAGE_SIGN[side] * edge * np.ones(n_lines), ys], 1)
        ends = np.stack([p.midline + IMAGE_SIGN[side] * (edge - lengths), ys + rng.uniform(-0.004, 0.004, n_lines)], 1)
        lines = splat_lines(shape, anatomy.to_pixels(starts), anatomy.to_pixels(ends),
                            np.full(n_lines, 1.4 * anatomy.px_scale), np.full(n_lines, 0.07))
        lines = np.where(lines > 0.01, lines, 0.0)
        inside = ((haze > 0) | (lines > 0)) & (field > 0.5)
        delta += np.where(inside, haze_delta + lines * field, 0.0)
        mask |= inside
    return _finish(finding, delta, mask)


def draw_emphysema(finding: Finding, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    """Hyperinflated, hyperlucent lungs with flattened, lowered domes and sparse peripheral markings."""
    drop = _level(finding.severity, (0.015, 0.03), (0.035, 0.05), (0.055, 0.075), rng)
    change = LungChange(
        dome_drop=drop,
        dome_flatten=min(1.0, 0.25 + 8.0 * drop),
        air_gain=1.0 + 4.0 * drop,
        marking_loss=min(0.85, 0.2 + 8.0 * drop),
    )
    changes = {side: change for side in _sides(finding)}
    inflated = anatomy.altered(changes=changes)
    region = np.zeros((anatomy.size, anatomy.size), bool)
    for side in changes:
        region |= (inflated.lung_field(side) > 0.02) | (anatomy.lung_field(side) > 0.02)
    # The lowered diaphragm itself, across the chest (under the heart too): it moved, so it changed.
    width = max(anatomy.params.lung_half_width_right, anatomy.params.lung_half_width_left)
    band = (anatomy.y > anatomy.domes - 2 * anatomy.px) & (anatomy.y < inflated.domes + 2 * anatomy.px)
    region |= band & (np.abs(anatomy.x - anatomy.params.midline) < width) & (np.abs(inflated.domes - anatomy.domes) > 0)
    return _finish(finding, inflated.density - anatomy.density, region, lung_changes=changes, compression=1.0)


DRAWERS = {
    FindingKind.NODULE: draw_nodule,
    FindingKind.MASS: draw_mass,
    FindingKind.CONSOLIDATION: draw_consolidation,
    FindingKind.ATELECTASIS: draw_atelectasis,
    FindingKind.EFFUSION: draw_effusion,
    FindingKind.PNEUMOTHORAX: draw_pneumothorax,
    FindingKind.CARDIOMEGALY: draw_cardiomegaly,
    FindingKind.EDEMA: draw_edema,
    FindingKind.GRANULOMA: draw_granuloma,
    FindingKind.EMPHYSEMA: draw_emphysema,
}
