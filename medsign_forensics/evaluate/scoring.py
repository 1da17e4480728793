"""Scoring one method of `medsign evaluate` (:mod:`.harness` runs them all): its rows of Table 1 and 2, and its
false positives on real radiographs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsign_forensics.attacks.base import Attack
from medsign_forensics.errors import ImageReadError
from medsign_forensics.evaluate.methods import Method, MethodKind
from medsign_forensics.evaluate.metrics import Detection, MeanOf, kind_confidences, region_differences
from medsign_forensics.key import match_counts
from medsign_forensics.localization.cache import CachedData
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.watermark.fidelity import psnr, ssim

REAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
LESION_LEVEL = 0.5  # A_loc above this is the lesion region


@dataclass
class Context:
    """What every method is scored against: the originals, maps, items and the classifier's view of them."""

    data: CachedData
    originals: list[np.ndarray]
    maps: np.ndarray  # (N, H, W) float32 A_loc (MedSign variant) in [0, 1]
    attacks: tuple[Attack, ...]
    fpr: float
    seed: int
    classifier: Any | None
    kinds: list[str]
    original_kinds: np.ndarray | None  # (N, len(kinds))
    original_labels: np.ndarray | None  # (N, len(LABELS))


def score_method(method: Method, ctx: Context, progress: ProgressFn | None) -> dict[str, Any]:
    """One method's row of every table: fidelity, bit accuracy and detection under each attack, false positives
    on the originals, the residual inside and outside the lesion maps, and Table 2's confidence shifts."""
    started = time.perf_counter()
    k = method.bits
    fpr = ctx.fpr / method.layers
    reference = ctx.originals if method.reference is None else method.reference
    pairs = list(zip(reference, method.images)) if method.same_sample else []
    psnrs = [psnr(o, w) for o, w in pairs] or [float("nan")] * len(method.images)
    ssims = [ssim(o, w) for o, w in pairs] or [float("nan")] * len(method.images)
    accuracy: dict[str, list[float]] = {}
    detection: dict[str, dict[str, Any]] = {}
    for a_index, attack in enumerate(ctx.attacks):
        attacked = [
            attack.exact(image, np.random.default_rng([ctx.seed, a_index, i])) for i, image in enumerate(method.images)
        ]
        counts = match_counts(method.detector(attacked), method.key)
        accuracy[attack.name] = [float(c) / k for c in counts]
        detection[attack.name] = Detection.of(counts, k, fpr).to_dict()
        notify(progress, method.name, a_index + 1, len(ctx.attacks) + 1)
    false_positives = Detection.of(match_counts(method.detector(ctx.originals), method.key), k, fpr)
    # A_loc belongs to the originals' latents: only a method decoded from them has lesion regions to compare
    maps: np.ndarray | list[np.ndarray] = ctx.maps if method.reference is None and method.same_sample else []
    regions = [
        r
        for r in (region_differences(o, w, m, level=LESION_LEVEL) for o, w, m in zip(reference, method.images, maps))
        if r
    ]
    result: dict[str, Any] = {
        "name": method.name,
        "kind": method.kind.value,
        "role": method.role.value,
        "source": method.source,
        "bits": k,
        "layers": method.layers,
        "same_sample": method.same_sample,
        "psnr": MeanOf.of(psnrs).to_dict(),
        "ssim": MeanOf.of(ssims).to_dict(),
        "bit_accuracy": {name: float(np.mean(values)) for name, values in accuracy.items()},
        "bit_accuracy_avg": float(np.mean([np.mean(v) for v in accuracy.values()])),
        "detection": detection,
        "false_positives_generated": false_positives.to_dict(),
        "lesion": {
            "images": len(regions),
            "inside": float(np.mean([r[0] for r in regions])) if regions else None,
            "outside": float(np.mean([r[1] for r in regions])) if regions else None,
        },
        "per_image": [
            {
                "report_id": item.report_id,
                "seed": item.seed,
                "psnr": None if not np.isfinite(p) else p,
                "ssim": None if not np.isfinite(s) else s,
                "bit_accuracy": {name: values[i] for name, values in accuracy.items()},
            }
            for i, (item, p, s) in enumerate(zip(ctx.data.items, psnrs, ssims))
        ],
    }
    result["confidence"] = confidence_shift(method, ctx)
    result["seconds"] = round(time.perf_counter() - started, 3)
    notify(progress, method.name, len(ctx.attacks) + 1, len(ctx.attacks) + 1)
    return result


def confidence_shift(method: Method, ctx: Context) -> dict[str, Any] | None:
    """|P_w - P_o| x 100 per finding kind (max over its sides), mean over ALL evaluated images."""
    if ctx.classifier is None or ctx.original_kinds is None or ctx.original_labels is None:
        return None
    from medsign_forensics.phantom.classifier import LABELS, predict

    probabilities = predict(ctx.classifier, np.stack(method.images))
    kinds = kind_confidences(probabilities, LABELS, ctx.kinds)
    per_kind = {
        kind: float(np.mean(np.abs(kinds[:, j] - ctx.original_kinds[:, j])) * 100) for j, kind in enumerate(ctx.kinds)
    }
    per_label = {
        label: float(np.mean(np.abs(probabilities[:, j] - ctx.original_labels[:, j])) * 100)
        for j, label in enumerate(LABELS)
    }
    return {
        "per_kind": per_kind,
        "avg": float(np.mean(list(per_kind.values()))) if per_kind else None,
        "per_label": per_label,
    }


def real_false_positives(
    methods: Sequence[Method], folder: Path, *, fpr: float, limit: int | None, baseline_limit: int,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Run every method's detector on real radiographs; count images matching its key at the target FPR."""
    from medsign_forensics.imageio import read_image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in REAL_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    counts: dict[str, list[int]] = {m.name: [] for m in methods}
    unreadable: list[str] = []
    for index, path in enumerate(files):
        try:
            pixels = read_image(path).pixels
        except ImageReadError as error:
            unreadable.append(f"{path.name}: {error}")
            continue
        for method in methods:
            if method.kind is MethodKind.POST_GENERATION and len(counts[method.name]) >= baseline_limit:
                continue
            counts[method.name].append(int(match_counts(method.detector([pixels]), method.key)[0]))
        notify(progress, "real radiographs", index + 1, len(files))
    return {
        "folder": str(folder),
        "files": len(files),
        "unreadable": unreadable,
        "per_method": {m.name: Detection.of(np.array(counts[m.name]), m.bits, fpr).to_dict() for m in methods},
    }
