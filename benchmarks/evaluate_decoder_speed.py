"""CPU cost of MedSign decoder fine-tuning: cache building per report and seconds per training step.

-> benchmarks/results/evaluate_decoder_speed.md

1. Cache: sample x0 with the frozen base model (25 DPM-Solver++ steps, guidance 4.0, cross-attention capture),
   build the three A_loc variants and decode I_o, for ``--reports`` Open-i training reports in batches of 4,
   exactly as ``train_decoder`` does (LatentCache.build). Seconds per report, wall clock and process CPU.
2. Fine-tuning: ``--steps`` optimiser steps of DecoderTrainer at ``--batch`` (default 4) on the cached
   256x256 items with the default attack set (one attack per step), the cxr preset weights and the Watson-DCT
   image loss. The first step (allocation, oneDNN primitive creation) is reported separately.

Model: ``--model DIR``, else the shipped mini-cxr when installed, else an UNTRAINED model of mini-cxr's default
architecture (weights do not change the cost). Extractor: the default HiDDeN architecture (48 bits) with
random weights and an identity whitening layer (its cost, not its accuracy, is measured).

The machine is shared: the 1-minute load average before and after each part is printed with the figures;
process CPU seconds (all threads) are given because they depend far less on the other jobs than wall time.

Usage:
    python benchmarks/evaluate_decoder_speed.py [--model DIR] [--reports 8] [--steps 8] [--batch 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.configs import default_config
from medsign_forensics.diffusion.export import build_random_model
from medsign_forensics.diffusion.loader import DEFAULT_MODEL_DIR
from medsign_forensics.fileio import write_text
from medsign_forensics.localization.cache import LatentCache, split_items
from medsign_forensics.watermark.deployment import key_from_hex
from medsign_forensics.watermark.extractor_io import load_extractor, save_extractor
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor
from medsign_forensics.watermark.train_decoder import DecoderTrainConfig, DecoderTrainer

OUT = Path(__file__).resolve().parent / "results" / "evaluate_decoder_speed.md"


def load_average() -> float:
    return os.getloadavg()[0]


def model_for_timing(path: str | None, workdir: Path) -> tuple[object, str]:
    if path is not None:
        return load_model(path), f"`{path}`"
    if DEFAULT_MODEL_DIR.is_dir():
        return load_model(None), "the shipped mini-cxr"
    from medsign_forensics.reports import load_reports

    texts = [r.text for r in load_reports("open-i")]
    folder = build_random_model(workdir / "mini-cxr-untrained", config=default_config(), texts=texts, seed=0)
    return load_model(folder), "an UNTRAINED model of mini-cxr's default architecture (mini-cxr is not trained yet)"


def extractor_for_timing(workdir: Path) -> Path:
    torch.manual_seed(0)
    extractor = HiddenExtractor(HiddenConfig())
    extractor.attach_whitening(torch.eye(48), torch.zeros(48))
    summary = {"n_samples": 0, "covariance": "identity (timing only)", "min_eigenvalue": 1.0, "max_eigenvalue": 1.0}
    save_extractor(extractor, workdir / "extractor", whitening=summary)
    return workdir / "extractor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--reports", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    workdir = Path(tempfile.mkdtemp(prefix="decoder-speed-"))
    model, model_note = model_for_timing(args.model, workdir)
    extractor_dir = extractor_for_timing(workdir)
    config = DecoderTrainConfig(batch=args.batch, steps=args.steps + 1, log_every=1000, checkpoint_every=10_000)
    items = split_items("open-i", held_out=False, n=args.reports, seed=0)

    # 1. Cache building, batch by batch (the same code path as train_decoder).
    cache = LatentCache(workdir / "cache")
    reference = copy.deepcopy(model.vae).float().eval()
    batches = []
    load_cache = [load_average()]
    for start in range(0, len(items), config.sample_batch):
        chunk = items[: start + config.sample_batch]
        wall, cpu = time.perf_counter(), time.process_time()
        data = cache.build(model, chunk, reference_vae=reference, steps=config.sample_steps,
                           guidance_scale=config.guidance_scale, batch=config.sample_batch)
        batches.append((len(chunk) - start, time.perf_counter() - wall, time.process_time() - cpu))
    load_cache.append(load_average())

    # 2. Fine-tuning steps.
    trainer = DecoderTrainer(
        config, model=model, extractor=load_extractor(extractor_dir), key=key_from_hex("0" * 12), data=data
    )
    steps = []
    load_train = [load_average()]
    for _ in range(args.steps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        _, _, _, attack = trainer.train_step()
        steps.append((attack, time.perf_counter() - wall, time.process_time() - cpu))
    load_train.append(load_average())

    size = model.image_size
    lines = [
        "# Decoder fine-tuning cost on CPU",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: 2-core CPU VM, no GPU ({platform.machine()}), torch {torch.__version__}, 2 threads",
        f"- Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- Model: {model_note}; images {size}x{size}, latents {model.latent_channels}x{size // model.vae_scale_factor}"
        f"x{size // model.vae_scale_factor}",
        "- Extractor: default HiDDeN architecture, 48 bits, random weights + identity whitening (cost only)",
        "",
        f"## Cache building ({len(items)} Open-i training reports, {config.sample_steps} steps, guidance "
        f"{config.guidance_scale}, batches of {config.sample_batch})",
        "",
        f"1-minute load average before/after: {load_cache[0]:.1f} / {load_cache[1]:.1f}",
        "",
        "| batch | reports | wall s | wall s / report | CPU s / report |",
        "| --- | --- | --- | --- | --- |",
    ]
    for index, (count, wall, cpu) in enumerate(batches):
        lines.append(f"| {index + 1} | {count} | {wall:.1f} | {wall / count:.2f} | {cpu / count:.2f} |")
    later = batches[1:] or batches
    per_report = sum(w for _, w, _ in later) / sum(c for c, _, _ in later)
    per_report_cpu = sum(c_ for _, _, c_ in later) / sum(c for c, _, _ in later)
    lines += [
        "",
        f"**Cache: {per_report:.2f} s per report wall, {per_report_cpu:.2f} CPU s per report** "
        f"(batches after the first).",
        "",
        f"## Fine-tuning steps (batch {args.batch}, {size}x{size}, cxr weights, default attack set)",
        "",
        f"1-minute load average before/after: {load_train[0]:.1f} / {load_train[1]:.1f}",
        "",
        "| step | attack | wall s | CPU s |",
        "| --- | --- | --- | --- |",
    ]
    for index, (attack, wall, cpu) in enumerate(steps):
        lines.append(f"| {index + 1}{' (first)' if index == 0 else ''} | {attack} | {wall:.2f} | {cpu:.2f} |")
    walls = [w for _, w, _ in steps[1:]]
    cpus = [c for _, _, c in steps[1:]]
    lines += [
        "",
        f"**Step: median {statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} CPU s** "
        f"(steps 2..{len(steps)}; mean {statistics.mean(walls):.2f} s wall).",
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
