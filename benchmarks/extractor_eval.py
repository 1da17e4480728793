"""Stage-1 evaluation: robustness of the HiDDeN pair and the false-positive premise of the whitened extractor.

1. Robustness (pre-whitening, as issue 4 defines it): N held-out images (phantoms with seeds from
   EVAL_SEED_BASE, disjoint from training and whitening seeds, or a folder), centre square at --size, each
   watermarked by the trained ENCODER with its own random key, stored as 8-bit, attacked with each MedSign
   Table-1 attack's EXACT form (Pillow JPEG, Pillow resampling), read with the extractor's RAW logits.
   Done means: >= 0.99 none, >= 0.95 each Table-1 attack, >= 0.90 JPEG 50.
2. Fair coins (post-whitening) on UNWATERMARKED images: phantoms and real radiographs. Per-bit mean of the
   extracted bits (target 0.5 +/- 0.05, shown with the chance that fair coins would meet it at that n, and
   tested directly: squared z-scores of the means vs chi-square(k)), and the distribution of match counts
   against FIXED keys compared with Binomial(k, 1/2) by a chi-square goodness-of-fit test on binned counts
   (tail bins pooled until each expected count is >= 5). Fixed keys, because against a freshly drawn random key
   the count is Binomial(k, 1/2) whatever the extractor outputs; a fixed key (as a registry holds) tests the
   extractor.
   Counts for the different keys share images, so the pooled test is approximate; per-key tests are shown
   as the fraction of keys with p < 0.05.

    python benchmarks/extractor_eval.py --model RUN_DIR [--phantoms 1000 | --folder DIR] \
        [--real ../shared/data/real-cxr-covid19-repo/png] [--unmarked-phantoms 500] [--keys 16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medsign_forensics.attacks.base import Attack
from medsign_forensics.attacks.codec import quantise
from medsign_forensics.attacks.library import TABLE1_ATTACKS
from medsign_forensics.fileio import sha256_file, write_text
from medsign_forensics.watermark.data import FolderSource, ImageSource, PhantomSource, centre_squares
from medsign_forensics.watermark.extractor_io import extract_bits, load_encoder, load_extractor
from medsign_forensics.watermark.fairness import bit_fairness
from medsign_forensics.watermark.train_extractor import EVAL_SEED_BASE

RESULTS = Path(__file__).resolve().parent / "results" / "extractor_eval.md"
TARGETS = {"none": 0.99, "jpeg_q50": 0.90}
DEFAULT_TARGET = 0.95
REAL_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-cxr-covid19-repo" / "png"


@torch.no_grad()
def robustness(model: Path, images: np.ndarray, attacks: tuple[Attack, ...], seed: int) -> dict[str, float]:
    encoder, extractor = load_encoder(model), load_extractor(model)
    bits = extractor.config.bits
    keys = np.random.default_rng(seed).integers(0, 2, size=(len(images), bits), dtype=np.uint8)
    marked = []
    for start in range(0, len(images), 32):
        batch = torch.from_numpy(images[start : start + 32, None])
        out = encoder(batch, torch.from_numpy(keys[start : start + 32].astype(np.float32)))
        marked.append(quantise(out[:, 0].numpy()))  # stored as an 8-bit file
    marked_all = np.concatenate(marked).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    accuracy = {}
    for attack in attacks:
        attacked = [attack.exact(image, rng) for image in marked_all]
        extracted, _ = extract_bits(extractor, attacked, raw=True)
        accuracy[attack.name] = float((extracted == keys).mean())
    return accuracy


def fairness(model: Path, images: np.ndarray, n_keys: int, seed: int) -> dict[str, object]:
    """Fair-coin statistics of the whitened bits the extractor at ``model`` reads from ``images``."""
    bits_out, _ = extract_bits(load_extractor(model), list(images))
    return bit_fairness(bits_out, n_keys, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="training output folder (extractor + encoder)")
    parser.add_argument("--phantoms", type=int, default=1000, help="images to watermark (held-out phantoms)")
    parser.add_argument("--folder", type=Path, help="watermark images from this folder instead of phantoms")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--unmarked-phantoms", type=int, default=500, help="unwatermarked phantoms for fairness")
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT, help="folder of real radiographs")
    parser.add_argument("--keys", type=int, default=16, help="fixed keys for the match-count test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="a line printed under the title (e.g. what run this is)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    if args.folder:
        marked_source: ImageSource = FolderSource(args.folder)
    else:
        marked_source = PhantomSource(args.phantoms, size=args.size, seed_base=EVAL_SEED_BASE, findings_seed=7)
    marked_images = centre_squares(marked_source, args.size, args.phantoms)
    accuracy = robustness(args.model, marked_images, TABLE1_ATTACKS, args.seed)

    fairness_rows: list[tuple[str, dict[str, object]]] = []
    if load_extractor(args.model).whitened:
        if args.unmarked_phantoms:
            unmarked = PhantomSource(
                args.unmarked_phantoms, size=args.size, seed_base=EVAL_SEED_BASE + 100_000, findings_seed=8
            )
            fairness_rows.append((unmarked.describe(),
                                  fairness(args.model, centre_squares(unmarked, args.size), args.keys, 9)))
        if args.real and args.real.is_dir():
            real = FolderSource(args.real)
            fairness_rows.append((f"real radiographs {args.real.name}/ ({len(real)})",
                                  fairness(args.model, centre_squares(real, args.size), args.keys, 9)))

    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    sha = sha256_file(args.model / "extractor.safetensors")
    lines = [
        "# Extractor evaluation (stage 1)",
        "",
        *([f"**{args.note}**", ""] if args.note else []),
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "- Machine: 2-core CPU VM, no GPU (shared; 1-minute load average at the end "
        f"{os.getloadavg()[0]:.1f})",
        f"- Command: `{command}`",
        f"- Model: `{args.model}`, extractor SHA-256 `{sha}`",
        f"- Watermarked images: {len(marked_images)} from {marked_source.describe()}, centre square at "
        f"{args.size}x{args.size}, one random key each, stored as 8-bit, attacked with the exact forms",
        f"- Wall time: {time.perf_counter() - started:.0f} s",
        "",
        "## Bit accuracy before whitening (encoder -> 8-bit -> attack -> extractor raw logits)",
        "",
        "| attack | bit accuracy | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, value in accuracy.items():
        target = TARGETS.get(name, DEFAULT_TARGET)
        lines.append(f"| {name} | {value:.4f} | >= {target:.2f} | {'yes' if value >= target else 'NO'} |")
    lines += ["", "## Unwatermarked images after whitening (fair-coin check)", ""]
    if not fairness_rows:
        lines.append("Not run: the extractor carries no whitening layer (train with --whiten-images N).")
    else:
        lines += [
            f"Match counts against {args.keys} fixed random keys vs Binomial(k, 1/2): mean k/2, variance k/4. "
            "Chi-square goodness of fit on binned counts (tails pooled to expected >= 5); pooled over keys "
            "(approximate: keys share images) and per key.",
            "",
            "P(fair): probability that k truly fair, independent coins would all have means within 0.5 +/- 0.05 "
            "over this many images. Bit-mean p: sum of squared z-scores of the per-bit means vs chi-square(k).",
            "",
            "| images | per-bit mean range | worst |mean-0.5| (target <= 0.05) | bits within 0.05 | P(fair) | "
            "bit-mean p | mean |corr| between bits | count mean / var | chi2 (bins) | p | keys with p < 0.05 | "
            "max count |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, row in fairness_rows:
            corr = row["mean_abs_bit_correlation"]
            lines.append(
                f"| {label} ({row['images']}) | {row['bit_mean_min']:.3f}-{row['bit_mean_max']:.3f} | "
                f"{row['worst_bit_deviation']:.3f} | {row['bits_within_0.05']}/{row['bits']} | "
                f"{row['fair_coin_pass_probability']:.3f} | {row['bit_mean_p']:.2g} | "
                f"{'-' if corr is None else f'{corr:.3f}'} | "
                f"{row['count_mean']:.2f} / {row['count_var']:.2f} | {row['chi2']:.1f} ({row['chi2_bins']}) | "
                f"{row['chi2_p']:.3g} | {row['keys_p_below_0.05']:.2f} | {row['max_count']} |"
            )
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
