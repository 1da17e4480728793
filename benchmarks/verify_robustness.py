"""Which working resolution should verify read at? Bit accuracy and detection after ordinary handling, per
scaling mode of `medsign_forensics.reading.reading_pixels`:

* auto (the default): images up to 256 px on the short side are read as they are; larger ones are resized to
  256 on the short side;
* native: always as they are;
* working: always resized to 256 on the short side (small images are scaled up).

Watermarked images come from a trained deployment (``--deployment DIR``: N reports generated with its
watermarked decoder, the real pipeline) or from a stage-1 encoder/extractor pair (``--stage1 DIR``, the output of
`medsign train --stage extractor`: random keys embedded into 256x256 chest-like images). Each image goes
through each attack (exact forms from the shared attack library), then through each scaling mode, then the
whitened extractor. Reported: mean bit accuracy and the detection rate at a single-key p <= 1e-6 and at a
family-wise 1e-6 over 1,000 keys (Bonferroni), both exact binomial thresholds.

    python benchmarks/verify_robustness.py --deployment DIR --extractor DIR [--model DIR] [--n 16]
    python benchmarks/verify_robustness.py --stage1 DIR [--n 32]

Needs trained weights; writes benchmarks/results/verify_robustness.md.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from medsign_forensics.attacks.codec import quantise
from medsign_forensics.evaluate.synthetic import chest_like
from medsign_forensics.training.environment import machine_line

REPO = Path(__file__).resolve().parents[1]

ATTACKS = ("none", "jpeg_q75", "resize_edge0.7", "resize_edge0.5", "resize_edge2", "resize_edge4",
           "crop_center_area0.5", "crop_center_edge0.5", "dicomwl_c2048_w4096", "resize_edge0.7+jpeg_q75")
REPORTS = ("Small right pleural effusion.", "Left lower lobe consolidation.", "Moderate cardiomegaly.",
           "No acute cardiopulmonary abnormality.", "Right upper lobe nodule.", "Bilateral pleural effusions.")


def from_deployment(args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    from medsign_forensics.diffusion import decode, load_model
    from medsign_forensics.diffusion.conditioning import sample_reports
    from medsign_forensics.imageio import BT601_LUMA
    from medsign_forensics.watermark.deployment import EMBEDDED, load_deployment

    deployment = load_deployment(args.deployment)
    base = deployment.base_model.get("path")
    model = load_model(args.model or (None if base == EMBEDDED else base))
    vae = deployment.watermarked_vae(model)
    images = []
    for index in range(args.n):
        # as `medsign generate` samples
        result = sample_reports(model, [REPORTS[index % len(REPORTS)]], seed=1000 + index, output="latents")
        decoded = decode(model, result.latents, vae=vae)[0].float().cpu().numpy()
        grey = decoded[0] if decoded.shape[0] == 1 else np.tensordot(BT601_LUMA, decoded, axes=1)
        images.append(quantise(grey))  # stored as 8 bits
    return images, [deployment.key] * len(images), f"deployment {deployment.name} ({args.n} generated images)"


def from_stage1(args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    from medsign_forensics.watermark.extractor_io import load_encoder

    encoder = load_encoder(args.stage1)
    rng = np.random.default_rng(0)
    images, keys = [], []
    with torch.no_grad():
        for index in range(args.n):
            key = rng.integers(0, 2, encoder.config.bits).astype(np.uint8)
            cover = torch.from_numpy(chest_like(256, 70_000 + index).astype(np.float32) / 255.0)[None, None]
            marked = encoder(cover, torch.from_numpy(key[None].astype(np.float32)))[0, 0].numpy()
            images.append(quantise(marked))
            keys.append(key)
    return images, keys, f"stage-1 encoder {args.stage1} ({args.n} chest-like covers, random keys)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployment", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--stage1", type=Path, help="folder with encoder.* and extractor.* from stage 1")
    parser.add_argument("--extractor", type=Path, help="default: the stage-1 folder's extractor")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verify_robustness.md")
    args = parser.parse_args()
    if (args.deployment is None) == (args.stage1 is None):
        raise SystemExit("give --deployment DIR (with --extractor) or --stage1 DIR")
    from medsign_forensics.attacks.library import get_attack
    from medsign_forensics.key import identification_threshold, threshold
    from medsign_forensics.reading import Scaling, reading_pixels
    from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor

    extractor = load_extractor(args.extractor or args.stage1)
    images, keys, source = from_deployment(args) if args.deployment else from_stage1(args)
    bits = extractor.config.bits
    single, family = threshold(bits, 1e-6), identification_threshold(bits, 1000, 1e-6)
    rng = np.random.default_rng(1)
    rows = []
    for name in ATTACKS:
        attack = get_attack(name)
        attacked = [attack.exact(image, rng) for image in images]
        for mode in Scaling:
            read = [reading_pixels(image, scaling=mode)[0] for image in attacked]
            extracted, _ = extract_bits(extractor, read)
            matches = np.array([int((row == key).sum()) for row, key in zip(extracted, keys)])
            rows.append((name, mode.value, f"{read[0].shape[1]}x{read[0].shape[0]}", matches.mean() / bits,
                         float((matches >= single).mean()), float((matches >= family).mean())))
            print(rows[-1])
    lines = [
        "# Verify robustness by working resolution",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}",
        "- command: `python benchmarks/verify_robustness.py "
        + (f"--deployment {args.deployment} --extractor {args.extractor}" if args.deployment else
           f"--stage1 {args.stage1}") + f" --n {args.n}`",
        f"- watermarked images: {source}",
        f"- detection thresholds ({bits} bits): single key p <= 1e-6 needs {single} matching bits; family-wise "
        f"1e-6 over 1,000 keys needs {family}",
        "",
        "| attack | scaling | read at | bit accuracy | detected (single key) | detected (1,000 keys) |",
        "| --- | --- | --- | --- | --- | --- |",
    ] + [f"| {a} | {m} | {size} | {acc:.3f} | {d1:.2f} | {dn:.2f} |" for a, m, size, acc, d1, dn in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
