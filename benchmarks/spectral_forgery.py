"""Forgery and removal against the shipped spectral watermark, by attacker class, through the real Verifier.

Genuine studies: 100 images of the original mini-cxr decoder for held-out reports (a decoder-training cache,
``--generated CACHE``) passed through the shipped demo deployment's watermark layer and stored as 8-bit PNG.
Real images: the first 100 real radiographs of ../shared/data, centre 256 x 256 at the working size. Every
result is a ``medsign verify`` verdict against the demo registry (default policy), with its evidence.

Attacker classes and attacks:

1. Public code and weights, ONE genuine image, no registry (copy attack): every lattice bin of the mark's band
   and the pilots is taken from the genuine image's FFT and written into a real image's FFT (the attacker needs
   neither the key nor which bits are on: the mark's energy sits on a public lattice).
2. Public code only, no genuine image, no registry: the attacker writes the mark of a key of their choosing
   (random) into real images; it should match no registered key.
3. Holder of the registry's keys (an insider; for the public demo registry, anyone): the mark of the demo key
   written into real images with the stage-1 embedder at 40.5 dB.
4. Removal, public code, one watermarked image: the same lattice bins replaced by the average of their
   neighbours (a notch), then stored as 8-bit.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/spectral_forgery.py --generated CACHE
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.attacks.storage import Requantize  # noqa: E402
from medsign_forensics.fileio import save_png, write_text  # noqa: E402
from medsign_forensics.imageio import read_image  # noqa: E402
from medsign_forensics.verify import Verifier, load_default_extractor, reading_pixels  # noqa: E402
from medsign_forensics.watermark.fidelity import psnr  # noqa: E402
from medsign_forensics.watermark.spectral import embed_image, layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real-cxr-covid19-repo" / "png"
RESULTS = REPO / "benchmarks" / "results" / "spectral_forgery.md"
STORE = Requantize(8)


def lattice_mask(size: int, config) -> np.ndarray:
    """Boolean (size, size) FFT mask of every lattice bin in the mark's band and the pilots, with conjugates."""
    lay, step, mask = layout(config), size // config.tile, np.zeros((size, size), dtype=bool)
    points = np.concatenate([lay.a.reshape(-1, 2), lay.b.reshape(-1, 2), lay.pilots])
    for ky, kx in points:
        for sy, sx in ((ky, kx), (-ky, -kx)):
            mask[(sy * step) % size, (sx * step) % size] = True
    return mask


def transplant(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fft2(target)
    spectrum[mask] = np.fft.fft2(source)[mask]
    return np.clip(np.fft.ifft2(spectrum).real, 0, 1)


def notch(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fft2(image)
    neighbours = sum(np.roll(np.roll(spectrum, dy, 0), dx, 1) for dy, dx in ((0, 2), (0, -2), (2, 0), (-2, 0))) / 4
    spectrum[mask] = neighbours[mask]
    return np.clip(np.fft.ifft2(spectrum).real, 0, 1)


def genuine_images(cache: Path, count: int) -> list[np.ndarray]:
    from medsign_forensics.generate import DEFAULT_DEPLOYMENT_DIR
    from medsign_forensics.localization.cache import cached_originals
    from medsign_forensics.watermark.deployment import load_deployment

    originals = [image[0] for _, image in cached_originals(cache, held_out=True)]
    head = load_deployment(DEFAULT_DEPLOYMENT_DIR).head()
    with torch.no_grad():
        marked = head(torch.from_numpy(np.stack(originals[:count]))[:, None])[:, 0].numpy()
    return [STORE.exact(x) for x in marked]


def verdicts(verifier: Verifier, images: list[np.ndarray], folder: Path, name: str) -> tuple[Counter, Counter]:
    kinds, evidence = Counter(), Counter()
    for index, image in enumerate(images):
        path = folder / f"{name}-{index:03d}.png"
        save_png(path, STORE.exact(image))
        verdict = verifier.verify_file(path)
        kinds[verdict.kind.value] += 1
        evidence[str(verdict.evidence)] += 1
    return kinds, evidence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    extractor = load_default_extractor()
    config = extractor.config
    mask = lattice_mask(256, config)
    genuine = genuine_images(args.generated, args.n)
    real = [reading_pixels(read_image(p).pixels)[0] for p in sorted(DATA.glob("*.png"))[: args.n]]
    real = [STORE.exact(img[(img.shape[0] - 256) // 2:][:256, (img.shape[1] - 256) // 2:][:, :256]) for img in real]
    from medsign_forensics.generate import load_default_deployment

    demo_key = load_default_deployment().key
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Verifier.open() as verifier:
        folder = Path(tmp)
        cases = {
            "genuine studies (reference)": (genuine, None),
            "1. copy attack: one genuine image's lattice bins into real images": (
                [transplant(r, genuine[i % len(genuine)], mask) for i, r in enumerate(real)], real),
            "2. forger's own random key written into real images": (
                [embed_image(r, rng.integers(0, 2, config.bits).astype(np.uint8), config) for r in real], real),
            "3. insider: the demo key written into real images": (
                [embed_image(r, demo_key, config) for r in real], real),
            "4. removal: lattice bins of genuine images notched out": (
                [notch(g, mask) for g in genuine], genuine),
        }
        for name, (images, reference) in cases.items():
            t0 = time.perf_counter()
            kinds, evidence = verdicts(verifier, images, folder, f"case{len(rows)}")
            cost = None if reference is None else float(np.mean([psnr(a, STORE.exact(b))
                                                                   for a, b in zip(reference, images)]))
            rows.append((name, len(images), kinds, evidence, cost, (time.perf_counter() - t0) / len(images)))
    lines = [
        "# Forgery and removal against the spectral watermark", "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; 2-core CPU VM, 1 torch thread",
        f"- command: `python benchmarks/spectral_forgery.py --generated CACHE --n {args.n}`",
        "- verifier: shipped extractor, demo registry, default policy; images stored as 8-bit PNG",
        f"- wall time {time.perf_counter() - started:.0f} s", "",
        "| case | images | verdicts | evidence | PSNR vs the image attacked (dB) | s per image (verify incl.) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, n, kinds, evidence, cost, seconds in rows:
        lines.append(f"| {name} | {n} | {dict(kinds)} | {dict(evidence)} | "
                     f"{'-' if cost is None else f'{cost:.1f}'} | {seconds:.3f} |")
    write_text(RESULTS, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
