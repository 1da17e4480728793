"""Does the latent layer change how bright an image is? Mean grey level of plain and latent-marked samples of the
same held-out reports and seeds, and the share of pixels clipped after brightness x2 (Table 1's attack).

Gaussian Shading fixes the SIGN of every initial-noise element from the key, so every image of one key starts
from noise whose mean is the same fixed pattern (about 0.8 x the signs); its low-frequency part is then the same
in every image. This probe measures what that does to the images, for the demo deployment's key and for a
random key, and for the same random key with each ``--blocks`` b > 1 (the layout that leaves each b x b block's
mean free: :mod:`medsign_forensics.watermark.latent`), whose price it measures too: the share of key bits the
layer reads back (5 inversion steps, plain decoder) from the clean image and after JPEG 50 and brightness x2.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/latent_brightness.py [--n 20] [--blocks 2,4] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.attacks.library import get_attack  # noqa: E402
from medsign_forensics.diffusion import load_model  # noqa: E402
from medsign_forensics.diffusion.conditioning import sample_reports  # noqa: E402
from medsign_forensics.diffusion.configs import DataConfig  # noqa: E402
from medsign_forensics.diffusion.sampling import decode  # noqa: E402
from medsign_forensics.errors import InputError  # noqa: E402
from medsign_forensics.fileio import write_text  # noqa: E402
from medsign_forensics.generate import load_default_deployment  # noqa: E402
from medsign_forensics.reports import load_reports, split_reports  # noqa: E402
from medsign_forensics.training.environment import machine_line  # noqa: E402
from medsign_forensics.watermark.latent import DEFAULT_INVERSION_STEPS, LatentConfig, LatentMark  # noqa: E402
from medsign_forensics.watermark.latent_reader import LatentReader  # noqa: E402

READ_ATTACKS = ("none", "jpeg_q50", "brightness_x2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="held-out reports (seeds 0..n-1)")
    parser.add_argument("--blocks", default="2,4", help="block sides of the free-mean layouts to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latent_brightness.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(None)
    deployment = load_default_deployment()
    rng = np.random.default_rng(0)
    key, secret = rng.integers(0, 2, 48).astype(np.uint8), rng.bytes(32)
    marks = {
        "plain (no latent layer)": None,
        "demo deployment's latent key": deployment.latent_mark(),
        "a random latent key": LatentMark(key=key, secret=secret, config=LatentConfig()),
    }
    for block in (int(b) for b in args.blocks.split(",") if b):
        marks[f"the same key, block {block}"] = LatentMark(key=key, secret=secret, config=LatentConfig(block=block))
    reader = LatentReader(model, steps=DEFAULT_INVERSION_STEPS)
    attacks = {name: get_attack(name) for name in READ_ATTACKS}
    config = DataConfig()
    _, test = split_reports(load_reports(config.corpus), test_fraction=config.test_fraction, seed=config.split_seed)
    reports = test[: args.n]
    side = model.image_size // model.vae_scale_factor
    shape = (model.latent_channels, side, side)
    brightness = get_attack("brightness_x2")
    rows = []
    for name, mark in marks.items():
        means, clipped, read = [], [], {attack: [] for attack in attacks}
        for seed, report in enumerate(reports):
            noise = None if mark is None else mark.initial_noise(shape, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                x0 = sample_reports(model, [report.text], seed=seed, latents=noise, output="latents").latents
                image = np.round(decode(model, x0)[0].mean(0).numpy() * 255) / 255
            attacked = brightness.exact(image, np.random.default_rng(seed))
            means.append(float(image.mean()))
            clipped.append(float((attacked >= 1 - 0.5 / 255).mean()))
            if mark is not None:
                for attack, function in attacks.items():
                    read[attack].append(_accuracy(reader, mark, function.exact(image, np.random.default_rng(seed))))
        rows.append((name, np.asarray(means), np.asarray(clipped), {k: float(np.mean(v)) for k, v in read.items()}))
        print(name, np.mean(means), np.mean(clipped), rows[-1][3], flush=True)
    plain = rows[0][1]
    lines = [
        "# Latent layer and image brightness",
        "",
        f"- Date: {datetime.now(UTC).replace(microsecond=0).isoformat()}; machine: {machine_line(model.device)}.",
        f"- Command: `python {' '.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}`",
        f"- Model: {model.name}, weights SHA-256 `{model.weights_sha256}`; {len(reports)} held-out reports, seed i "
        "for report i, sampled as `medsign generate` samples (25 steps, guidance 4); plain decoder; 8-bit grey.",
        "",
        "| initial noise | mean grey level | brighter than plain (same report and seed) "
        "| pixels clipped after brightness x2 | " + " | ".join(f"bits read, {a}" for a in attacks) + " |",
        "| --- | --- | --- | --- |" + " --- |" * len(attacks),
    ]
    for name, means, clipped, read in rows:
        brighter = (
            "—" if means is plain else f"{np.mean(means > plain):.2f} of images, by {np.mean(means - plain):+.3f}"
        )
        bits = " | ".join(f"{read[a]:.3f}" if read else "—" for a in attacks)
        lines.append(
            f"| {name} | {means.mean():.3f} (sd {means.std():.3f}) | {brighter} | {clipped.mean():.2f} | {bits} |"
        )
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _accuracy(reader: LatentReader, mark: LatentMark, image: np.ndarray) -> float:
    """Share of the key's bits read back from one image (0 when too little of it is usable)."""
    try:
        noise, mask, _ = reader.noise(image)
        return float(np.mean(mark.read(noise, mask).bits == mark.key))
    except InputError:
        return 0.0


if __name__ == "__main__":
    raise SystemExit(main())
