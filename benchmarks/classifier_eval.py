"""Held-out evaluation of the finding classifier -> benchmarks/results/classifier_eval.md.

Measures, on the phantoms the weights' own training config holds out (Open-i TEST-split reports plus random
findings with renderer seeds disjoint from training):
- AUROC per label (sklearn roc_auc_score) with positive/negative counts, overall and per source;
- the judge's own noise floor: the mean and 95th-percentile absolute change of its probabilities, in
  percentage points as in MedSign Table 2, under a JPEG (quality 90) round trip and under Gaussian noise
  (sigma 2/255), which is what a "diagnostically neutral" edit should stay near;
- CPU inference time per image.

Usage:
    python benchmarks/classifier_eval.py [--weights DIR] [--cache DIR] [--out FILE] [--workers N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medsign_forensics.attacks.codec import jpeg_round_trip
from medsign_forensics.fileio import write_text
from medsign_forensics.phantom.classifier import (
    DEFAULT_CLASSIFIER_DIR,
    LABELS,
    load_classifier,
    predict,
    read_classifier_config,
)
from medsign_forensics.phantom.classifier_data import renderer_digest
from medsign_forensics.phantom.classifier_train import MIN_SUPPORT, TrainConfig, held_out_data

MACHINE = "2-core CPU VM, no GPU"
TARGET = 0.95


def _auroc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    positives = int(truth.sum())
    return float(roc_auc_score(truth, scores)) if 0 < positives < truth.size else None


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([jpeg_round_trip(image, quality) for image in images])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_CLASSIFIER_DIR)
    parser.add_argument("--cache", type=Path, default=Path("runs/classifier_eval_cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/classifier_eval.md"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    model = load_classifier(args.weights)
    meta = read_classifier_config(args.weights)
    config = TrainConfig.from_dict(meta["train_config"])
    renderer_now = renderer_digest()
    trained_on = str(meta.get("renderer_sha256") or "unrecorded")
    started = time.perf_counter()
    data = held_out_data(config, args.cache, workers=args.workers)
    render_seconds = time.perf_counter() - started

    started = time.perf_counter()
    probabilities = predict(model, data.images, batch_size=64)
    seconds_per_image = (time.perf_counter() - started) / len(data.images)
    truth = data.labels > 0.5
    from_reports = np.array([spec.source.startswith("report:") for spec in data.specs])

    rng = np.random.default_rng(0)
    noisy = np.clip(data.images / 255.0 + rng.normal(0, 2 / 255, data.images.shape), 0, 1).astype(np.float32)
    shifts = {
        "JPEG q90": np.abs(predict(model, _jpeg(data.images, 90), batch_size=64) - probabilities) * 100,
        "noise σ=2/255": np.abs(predict(model, noisy, batch_size=64) - probabilities) * 100,
    }

    rows = []
    misses = []
    for j, label in enumerate(LABELS):
        positives = int(truth[:, j].sum())
        negatives = int(truth.shape[0] - positives)
        auroc = _auroc(truth[:, j], probabilities[:, j])
        enough = positives >= MIN_SUPPORT and negatives >= MIN_SUPPORT
        if enough and auroc is not None and auroc < TARGET:
            misses.append(label)
        rows.append(
            f"| {label} | {_fmt(auroc)} | {positives} | {negatives} | {'yes' if enough else 'no'} "
            f"| {_fmt(_auroc(truth[from_reports, j], probabilities[from_reports, j]))} "
            f"({int(truth[from_reports, j].sum())}) "
            f"| {_fmt(_auroc(truth[~from_reports, j], probabilities[~from_reports, j]))} "
            f"({int(truth[~from_reports, j].sum())}) "
            f"| {shifts['JPEG q90'][:, j].mean():.2f} | {shifts['noise σ=2/255'][:, j].mean():.2f} |"
        )
    supported = [r for r in rows if "| yes |" in r]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Finding classifier: held-out evaluation",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {MACHINE} ({platform.processor() or platform.machine()}, torch {torch.__version__})",
        f"- Command: `{command}`",
        f"- Weights: `{args.weights}` (SHA-256 `{meta['weights_sha256']}`)",
        f"- Trained with: `{meta.get('command') or 'unrecorded'}`, {meta.get('steps')} steps, "
        f"{meta.get('train_images')} training phantoms, {meta.get('train_seconds')} s training loop",
        f"- Renderer: source SHA-256 `{renderer_now}` at evaluation; the weights were trained on renders of "
        f"`{trained_on}`"
        + (" (the same code)" if renderer_now == trained_on else " (the renderer has changed since training)"),
        f"- Held-out phantoms: {len(data.images)} ({int(from_reports.sum())} from Open-i TEST-split reports, "
        f"{int((~from_reports).sum())} with random findings; renderer seeds disjoint from training); "
        f"render/cache load {render_seconds:.0f} s",
        f"- Inference: {seconds_per_image * 1000:.1f} ms per {config.size}x{config.size} image on CPU "
        "(batch 64, 2 threads)",
        "",
        f"Target: AUROC >= {TARGET} for every label with enough support (>= {MIN_SUPPORT} held-out positives and "
        f"negatives). Labels with enough support: {len(supported)} of {len(LABELS)}; below target: "
        f"{', '.join(misses) if misses else 'none'}.",
        "",
        "Labels are the patient's side (`_right` = IMAGE LEFT). The last two columns are the judge's own noise "
        "floor: mean |Δp| x 100 (percentage points, as MedSign Table 2) under a JPEG q90 round trip and under "
        "Gaussian noise σ = 2/255.",
        "",
        "| label | AUROC | positives | negatives | enough support | AUROC reports (pos) | AUROC random (pos) "
        "| mean Δp JPEG90 (pp) | mean Δp noise (pp) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Over all labels and images: "
        + "; ".join(
            f"{name}: mean |Δp| {shift.mean():.2f} pp, 95th percentile {np.percentile(shift, 95):.2f} pp"
            for name, shift in shifts.items()
        )
        + ".",
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
