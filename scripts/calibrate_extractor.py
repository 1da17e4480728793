"""Write the shipped spectral extractor folder with its empirical null calibration.

The calibration (:func:`medsign_forensics.watermark.calibration.fit_null`) is fitted on bits read from
UNWATERMARKED images of every family the verifier meets, each also after JPEG 50 (the attack that biased the
bits most in ``benchmarks/spectral_extractor.py``):

* real radiographs (a folder, read at the verifier's working size exactly as ``medsign verify`` reads them);
* phantoms rendered from report texts with seeds that no benchmark uses (700000 + i);
* images of the ORIGINAL base-model decoder: the ``image`` arrays of a decoder-training cache folder
  (``medsign train --cache DIR``), only those sampled from TRAINING-split reports, so that the held-out
  evaluation stays out of sample.

    OMP_WAIT_POLICY=PASSIVE python scripts/calibrate_extractor.py --out medsign_forensics/weights/extractor \\
        --real ../shared/data/real-cxr-covid19-repo/png --phantoms 500 --generated CACHE_DIR
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.attacks.library import get_attack  # noqa: E402
from medsign_forensics.attacks.storage import Requantize  # noqa: E402
from medsign_forensics.imageio import read_image  # noqa: E402
from medsign_forensics.phantom.renderer import render_report  # noqa: E402
from medsign_forensics.reading import reading_pixels  # noqa: E402
from medsign_forensics.watermark.calibration import fit_null  # noqa: E402
from medsign_forensics.watermark.extractor_io import extract_bits, save_spectral_extractor  # noqa: E402
from medsign_forensics.watermark.spectral import SpectralConfig, SpectralExtractor  # noqa: E402

REPORTS = ("No acute cardiopulmonary abnormality.", "Large right pleural effusion.", "Moderate cardiomegaly.",
           "Left lower lobe consolidation.", "Small left apical pneumothorax.", "Right upper lobe nodule.")
STORE = Requantize(8)


def real_images(folder: Path) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".dcm", ".jpg", ".jpeg"))
    return [reading_pixels(read_image(p).pixels)[0] for p in files]


def phantoms(count: int) -> list[np.ndarray]:
    return [STORE.exact(render_report(REPORTS[i % len(REPORTS)], seed=700000 + i)[0].image) for i in range(count)]


def generated(cache: Path) -> list[np.ndarray]:
    from medsign_forensics.localization.cache import cached_originals

    return [STORE.exact(image[0]) for _, image in cached_originals(cache, held_out=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--phantoms", type=int, default=500)
    parser.add_argument("--generated", type=Path, required=True)
    parser.add_argument("--margin-sd", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SpectralConfig()
    extractor = SpectralExtractor(config)
    jpeg = get_attack("jpeg_q50")
    families = {"real": real_images(args.real), "phantoms": phantoms(args.phantoms),
                "generated": generated(args.generated)}
    sets: dict[str, np.ndarray] = {}
    for name, images in families.items():
        sets[name] = extract_bits(extractor, images)[0]
        sets[f"{name}+jpeg_q50"] = extract_bits(extractor, [STORE.exact(jpeg.exact(x)) for x in images])[0]
        print(name, len(images), "images", flush=True)
    calibration = fit_null(sets, margin_sd=args.margin_sd)
    save_spectral_extractor(config, args.out, calibration=calibration)
    for entry in calibration.sets:
        print(entry)
    low, high = np.array(calibration.rate_one_low), np.array(calibration.rate_one_high)
    print(f"rate of a one per bit: low {low.min():.3f}..{low.max():.3f}, high {high.min():.3f}..{high.max():.3f}")


if __name__ == "__main__":
    main()
