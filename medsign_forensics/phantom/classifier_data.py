"""Training and held-out data for the finding classifier: which phantoms to render, rendering them, labels.

Two sources of finding lists are mixed: findings parsed from real reports (realistic co-occurrence and the
many normal studies) and randomly sampled findings (every kind, side, zone and severity, so every label has
support). Labels come from what the renderer actually DREW (its returned findings and non-empty masks), not
from the request, so a finding the renderer resolved or skipped is labelled as drawn.

Renders are cached as uint8 shards on disk (``shard_00000.npz`` ...) so an interrupted run resumes where it
stopped and the training loop never renders twice.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.errors import DatasetError
from medsign_forensics.fileio import atomic_path, write_text
from medsign_forensics.phantom.classifier import LABEL_INDEX, LABELS, label_name
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone
from medsign_forensics.training.progress import ProgressFn, notify

SHARD_SIZE = 256
#: Label masks are stored at MASK_GRID x MASK_GRID cells (8x8 pixels each at 256): enough to say where a
#: lesion is for the auxiliary localisation loss, small enough to keep in memory for every phantom.
MASK_GRID = 32
CACHE_FORMAT = "images+labels+masks32"
#: Modules whose source decides what a render looks like; their digest stamps every render cache.
RENDERER_MODULES = (
    "medsign_forensics.attacks.codec",  # quantises the rendered image to 8 bits
    "medsign_forensics.phantom.anatomy",
    "medsign_forensics.phantom.lesions",
    "medsign_forensics.phantom.params",
    "medsign_forensics.phantom.raster",
    "medsign_forensics.phantom.renderer",
    "medsign_forensics.phantom.skeleton",
)

# How many findings a random study gets: normals and single findings dominate, as in real reports.
_COUNT_P = (0.15, 0.45, 0.28, 0.12)
_LATERAL_SIDES = (Side.RIGHT, Side.LEFT, Side.BILATERAL)
# Edema and emphysema are usually bilateral in life; other kinds mostly one-sided.
_SIDE_P_DIFFUSE = (0.25, 0.25, 0.5)
_SIDE_P_FOCAL = (0.45, 0.45, 0.1)
_ZONES = (Zone.UPPER, Zone.MIDDLE, Zone.LOWER, Zone.UNSPECIFIED)
_SEVERITIES = (Severity.MILD, Severity.MODERATE, Severity.SEVERE, Severity.UNSPECIFIED)


@dataclass(frozen=True)
class RenderSpec:
    """One phantom to render: the requested findings, the renderer seed, and where the findings came from."""

    findings: tuple[Finding, ...]
    seed: int
    source: str  # "report:<report_id>" or "random"

    def to_dict(self) -> dict[str, object]:
        return {"findings": [f.to_dict() for f in self.findings], "seed": self.seed, "source": self.source}


def random_findings(rng: np.random.Generator) -> tuple[Finding, ...]:
    """0-3 present findings of distinct kinds with random sides, zones and severities."""
    count = int(rng.choice(len(_COUNT_P), p=_COUNT_P))
    kinds = rng.choice(len(FindingKind), size=count, replace=False)
    findings = []
    for index in kinds:
        kind = list(FindingKind)[int(index)]
        if kind.lateralised:
            p = _SIDE_P_DIFFUSE if kind in (FindingKind.EDEMA, FindingKind.EMPHYSEMA) else _SIDE_P_FOCAL
            side = _LATERAL_SIDES[int(rng.choice(3, p=p))]
        else:
            side = Side.UNSPECIFIED
        findings.append(
            Finding(
                kind=kind,
                side=side,
                zone=_ZONES[int(rng.integers(len(_ZONES)))],
                severity=_SEVERITIES[int(rng.integers(len(_SEVERITIES)))],
            )
        )
    return tuple(findings)


def report_specs(reports: Sequence[object], *, repeats: int, seed_base: int) -> list[RenderSpec]:
    """Render specs for each report's parsed findings, ``repeats`` times with different renderer seeds."""
    from medsign_forensics.reports import parse_report

    specs: list[RenderSpec] = []
    seed = seed_base
    for report in reports:
        findings = tuple(f for f in parse_report(report.text) if f.present)  # type: ignore[attr-defined]
        for _ in range(repeats):
            specs.append(RenderSpec(findings, seed, f"report:{report.report_id}"))  # type: ignore[attr-defined]
            seed += 1
    return specs


def random_specs(count: int, *, seed_base: int, rng_seed: int) -> list[RenderSpec]:
    """``count`` specs of random findings; renderer seeds ``seed_base .. seed_base + count - 1``."""
    rng = np.random.default_rng(rng_seed)
    return [RenderSpec(random_findings(rng), seed_base + i, "random") for i in range(count)]


def _mask_sides(mask: np.ndarray) -> tuple[Side, ...]:
    """Patient sides a mask covers: the patient's RIGHT is the IMAGE-LEFT half (columns < W/2).

    A side counts when it holds at least a fifth of the mask, so a lesion that just crosses the midline
    is not labelled on both sides.
    """
    width = mask.shape[1]
    right = int(mask[:, : width // 2].sum())
    left = int(mask[:, width // 2 :].sum())
    total = right + left
    return tuple(side for side, part in ((Side.RIGHT, right), (Side.LEFT, left)) if total and part >= 0.2 * total)


def study_targets(
    masks: Sequence[tuple[Finding, np.ndarray]], *, grid: int = MASK_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and coarse label masks of what a rendered study shows.

    Returns (multi-hot float32 (L,), bool (L, grid, grid)): each finding with a non-empty mask is labelled on
    its drawn side(s) (a side the renderer resolved is used as given; an unspecified one is read off the
    mask's image half). A label's mask is the finding's mask, cut to the side's image half when the finding
    lies on both sides, reduced to ``grid`` x ``grid`` cells (a cell is on when any of its pixels is).
    """
    target = np.zeros(len(LABELS), dtype=np.float32)
    label_masks = np.zeros((len(LABELS), grid, grid), dtype=bool)
    for finding, mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if not finding.present or not mask.any():
            continue
        if not finding.kind.lateralised:
            sides: tuple[Side | None, ...] = (None,)
        elif finding.side is Side.BILATERAL:
            sides = (Side.RIGHT, Side.LEFT)
        elif finding.side in (Side.RIGHT, Side.LEFT):
            sides = (finding.side,)
        else:
            sides = _mask_sides(mask)
        for side in sides:
            index = LABEL_INDEX[label_name(finding.kind, side)]
            target[index] = 1.0
            part = mask if len(sides) == 1 else _half(mask, side)
            label_masks[index] |= _block_any(part, grid)
    return target, label_masks


def study_labels(masks: Sequence[tuple[Finding, np.ndarray]]) -> np.ndarray:
    """Multi-hot labels (float32, :data:`LABELS` order) of what a rendered study shows; see study_targets."""
    return study_targets(masks)[0]


def _half(mask: np.ndarray, side: Side | None) -> np.ndarray:
    """The part of ``mask`` in the patient's ``side`` of the image (RIGHT = image-left columns)."""
    out = np.zeros_like(mask)
    middle = mask.shape[1] // 2
    columns = slice(0, middle) if side is Side.RIGHT else slice(middle, None)
    out[:, columns] = mask[:, columns]
    return out


def _block_any(mask: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) bool -> (grid, grid): a cell is on when any pixel of its block is (H, W multiples of grid)."""
    h, w = mask.shape
    if h % grid or w % grid:
        raise DatasetError(f"a {h}x{w} mask cannot be reduced to a {grid}x{grid} grid; render at a multiple of {grid}")
    return np.asarray(mask.reshape(grid, h // grid, grid, w // grid).any(axis=(1, 3)))


def _render_one(spec: RenderSpec, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from medsign_forensics.phantom.renderer import render_study

    study = render_study(spec.findings, seed=spec.seed, size=size)
    labels, label_masks = study_targets(study.masks)
    return to_uint8(study.image), labels, np.packbits(label_masks, axis=-1)


@functools.lru_cache(maxsize=1)
def loaded_renderer_digest() -> str:
    """The renderer digest as of this process's first render: what its imported renderer code was."""
    import medsign_forensics.phantom.renderer  # noqa: F401  (import first, then read the files it came from)

    return renderer_digest()


def _render_shard(args: tuple[list[RenderSpec], int]) -> tuple[dict[str, np.ndarray], float, str]:
    specs, size = args
    digest = loaded_renderer_digest()
    start = time.process_time()  # CPU time, not wall time: the honest cost on a shared machine
    images, labels, masks = zip(*(_render_one(spec, size) for spec in specs))
    arrays = {"images": np.stack(images), "labels": np.stack(labels), "masks": np.stack(masks)}
    return arrays, time.process_time() - start, digest


def render_pool(workers: int) -> multiprocessing.pool.Pool | None:
    """A pool of rendering processes (None for ``workers <= 1``); share one across caches of one run so
    every shard of the run comes from the same imported renderer code."""
    if workers <= 1:
        return None
    # spawn: the parent may hold torch thread pools that a forked child must not inherit.
    return multiprocessing.get_context("spawn").Pool(workers)


def renderer_digest() -> str:
    """SHA-256 over the renderer's source files: a cache or a classifier belongs to one renderer version."""
    digest = hashlib.sha256()
    for name in RENDERER_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise DatasetError(f"renderer module {name} cannot be found; reinstall medsign-forensics")
        digest.update(name.encode() + b"\n" + Path(spec.origin).read_bytes())
    return digest.hexdigest()


def specs_digest(specs: Sequence[RenderSpec], size: int) -> str:
    """SHA-256 of the spec list and size: a cache folder belongs to exactly one such list."""
    digest = hashlib.sha256(f"size={size}\nformat={CACHE_FORMAT}\n".encode())
    for spec in specs:
        digest.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass
class PhantomArrays:
    """Rendered phantoms in memory: images uint8 (N, H, W), labels float32 (N, L), label masks bit-packed uint8
    (N, L, MASK_GRID, MASK_GRID / 8) (see :meth:`label_masks`), and their specs."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    specs: list[RenderSpec]
    render_cpu_seconds: float  # CPU seconds spent rendering in this call (0 when everything came from the cache)

    def label_masks(self, index: np.ndarray) -> np.ndarray:
        """bool (len(index), L, MASK_GRID, MASK_GRID) label masks of the given phantoms."""
        return np.unpackbits(self.masks[index], axis=-1).astype(bool)


def render_cached(
    specs: Sequence[RenderSpec],
    cache_dir: str | Path,
    *,
    size: int,
    workers: int = 2,
    pool: multiprocessing.pool.Pool | None = None,
    progress: ProgressFn | None = None,
    task: str = "rendering phantoms",
) -> PhantomArrays:
    """Render ``specs`` into uint8 shards under ``cache_dir`` (resuming finished shards) and load them all.

    Raises DatasetError when the folder holds shards of a different spec list or of another renderer version
    (so a changed renderer never silently reuses stale phantoms), or when a worker's imported renderer code
    is not the version the cache was stamped with. ``pool`` (see :func:`render_pool`) overrides ``workers``.
    ``progress`` receives events of ``task`` counting the rendered phantoms.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stamps = {cache / "specs.sha256": specs_digest(specs, size), cache / "renderer.sha256": renderer_digest()}
    started = any(cache.glob("shard_*.npz"))
    for stamp, digest in stamps.items():
        if (started or stamp.exists()) and (not stamp.exists() or stamp.read_text().strip() != digest):
            what = "another spec list or size" if stamp.name == "specs.sha256" else "another renderer version"
            raise DatasetError(
                f"render cache holds phantoms of {what}; delete the folder or use another output", path=cache
            )
    for stamp, digest in stamps.items():
        write_text(stamp, digest + "\n")
    renderer_stamp = stamps[cache / "renderer.sha256"]
    chunks = [list(specs[i : i + SHARD_SIZE]) for i in range(0, len(specs), SHARD_SIZE)]
    paths = [cache / f"shard_{i:05d}.npz" for i in range(len(chunks))]
    todo = [i for i, path in enumerate(paths) if not path.exists()]
    render_cpu_seconds = 0.0
    if todo:
        done = len(specs) - sum(len(chunks[i]) for i in todo)
        notify(progress, task, done, len(specs))
        jobs = [(chunks[i], size) for i in todo]
        owned = pool is None and workers > 1
        active = render_pool(workers) if owned else pool
        try:
            results = active.imap(_render_shard, jobs) if active is not None else map(_render_shard, jobs)
            for i, (arrays, seconds, digest) in zip(todo, results):
                if digest != renderer_stamp:
                    raise DatasetError(
                        "the renderer's code changed after this cache was started, so it would mix two "
                        "versions; delete the folder and render again once the renderer is stable",
                        path=cache,
                    )
                _save_shard(paths[i], arrays)
                render_cpu_seconds += seconds
                done += len(arrays["images"])
                notify(progress, task, done, len(specs))
        finally:
            if owned and active is not None:
                active.terminate()
    loaded: dict[str, list[np.ndarray]] = {"images": [], "labels": [], "masks": []}
    for path in paths:
        with np.load(path) as shard:
            for key, parts in loaded.items():
                parts.append(shard[key])
    empty: dict[str, np.ndarray] = {
        "images": np.zeros((0, size, size), np.uint8),
        "labels": np.zeros((0, len(LABELS)), np.float32),
        "masks": np.zeros((0, len(LABELS), MASK_GRID, MASK_GRID // 8), np.uint8),
    }
    arrays = {key: np.concatenate(parts) if parts else empty[key] for key, parts in loaded.items()}
    return PhantomArrays(
        images=arrays["images"],
        labels=arrays["labels"],
        masks=arrays["masks"],
        specs=list(specs),
        render_cpu_seconds=render_cpu_seconds,
    )


def _save_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays might name allow_pickle
