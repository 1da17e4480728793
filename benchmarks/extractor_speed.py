"""Extraction throughput on this CPU: PNG files on disk -> decoded grey -> extractor -> bits.

Issue 4 asks for >= 20 images/s for 256x256 inputs INCLUDING file decoding, median of 5 runs. Each run reads
every PNG with the toolkit's reader (medsign_forensics.imageio.read_image) and extracts in batches, exactly
as a folder scan would. Throughput does not depend on the weights' values, so without --model the shipped
architecture is timed with freshly initialised weights (the report says which).

    python benchmarks/extractor_speed.py [--model DIR] [--images 64] [--batch 16] [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.fileio import sha256_file, write_text
from medsign_forensics.imageio import read_image
from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor

RESULTS = Path(__file__).resolve().parent / "results" / "extractor_speed.md"


def write_pngs(folder: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        yy, xx = np.mgrid[0:size, 0:size] / size
        picture = 0.45 + 0.25 * np.sin(rng.uniform(4, 20) * xx) * np.cos(rng.uniform(4, 20) * yy)
        picture = np.clip(picture + rng.normal(0, 0.03, picture.shape), 0, 1)
        path = folder / f"{i:04d}.png"
        Image.fromarray(to_uint8(picture)).save(path)
        paths.append(path)
    return paths


def one_run(extractor: HiddenExtractor, paths: list[Path], batch: int) -> float:
    start = time.perf_counter()
    images = [read_image(p).pixels for p in paths]
    extract_bits(extractor, images, batch_size=batch)
    return len(paths) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="trained extractor folder (default: fresh weights)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.model:
        extractor = load_extractor(args.model)
        weights = f"{args.model} (SHA-256 {sha256_file(args.model / 'extractor.safetensors')[:16]}...)"
    else:
        extractor = HiddenExtractor(HiddenConfig()).eval()
        weights = "freshly initialised weights of the default architecture (speed does not depend on values)"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pngs(Path(tmp), args.images, args.size)
        one_run(extractor, paths[: args.batch], args.batch)  # warm-up: oneDNN kernel selection
        load_before = os.getloadavg()[0]
        rates = [one_run(extractor, paths, args.batch) for _ in range(args.runs)]
        load_after = os.getloadavg()[0]
    median = statistics.median(rates)
    config = extractor.config
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    text = f"""# Extractor speed

- Date: {dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
- Machine: 2-core CPU VM, no GPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, \
{args.threads} threads
- Command: `{command}`
- Weights: {weights}
- Architecture: stride-2 stem {config.extractor_stem_channels} ch, {config.extractor_blocks} x 3x3 conv \
{config.extractor_channels} ch at 1/4 resolution, BatchNorm, {config.bits} bits
- Workload: {args.images} PNG files of {args.size}x{args.size} 8-bit grey, read with `imageio.read_image`, \
extracted in batches of {args.batch}
- 1-minute load average before/after: {load_before:.1f} / {load_after:.1f} (the machine is shared; higher load \
means slower runs)

| run | images/s |
| --- | --- |
""" + "".join(f"| {i + 1} | {rate:.1f} |\n" for i, rate in enumerate(rates)) + f"""
**Median of {args.runs}: {median:.1f} images/s** (target: >= 20 images/s including decoding).
"""
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
