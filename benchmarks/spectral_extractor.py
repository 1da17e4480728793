"""Stage-1 evaluation of the training-free spectral watermark (medsign_forensics/watermark/spectral.py).

What is measured (256 px working size, 48-bit keys, every image stored as 8-bit before and after an attack):

1. Robustness with blind synchronisation: 100 held-out phantoms + 100 real radiographs (the first 100 PNGs by
   name, centre 256x256 square of the verifier's working-size pixels), each marked by ``embed_image`` at
   40.5 dB PSNR with its own random key, attacked with each MedSign Table-1 attack's exact form and read blind.
   Per attack and set: mean / 5th percentile / minimum bit accuracy, fraction of images >= 0.95, sync success
   (found geometry within 1.5 degrees and 3 % scale of the truth) and the 5th percentile of the presence score.
2. Null behaviour on UNWATERMARKED images, as read and after Pillow JPEG 50: every real file in the shared data
   folder at the working size, 1,000 phantoms, and the original mini-cxr decoder's cached images. Per-bit means
   with their chi-square test, the presence score, and the best match against 1,000 random 48-bit keys with
   the number of images a family-wise p <= 1e-6 would attribute (with and without the presence gate).
3. Speed: milliseconds per blind read of a 256x256 image on one thread.
4. Synchronisation on a few marked phantoms rotated by -40, -10, 10, 40 degrees and resized by 0.75 and 1.5.

    python benchmarks/spectral_extractor.py [--generated CACHE] [--threads 1]

CACHE: a decoder-training cache folder (``medsign train --cache``) holding the original decoder's images of
held-out reports (e.g. the one ``--eval-reports 200`` filled); without it that null set is skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import binom, chi2  # noqa: E402

from medsign_forensics.attacks.base import Attack  # noqa: E402
from medsign_forensics.attacks.geometric import Resize, Rotate  # noqa: E402
from medsign_forensics.attacks.library import TABLE1_ATTACKS, get_attack  # noqa: E402
from medsign_forensics.attacks.storage import Requantize  # noqa: E402
from medsign_forensics.fileio import write_text  # noqa: E402
from medsign_forensics.imageio import read_image  # noqa: E402
from medsign_forensics.phantom.renderer import render_report  # noqa: E402
from medsign_forensics.reading import load_default_extractor, reading_pixels  # noqa: E402
from medsign_forensics.watermark.spectral import Reading, SpectralExtractor, embed_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "spectral_extractor.md"
DATA = ROOT.parent / "shared" / "data"
REPORTS = ("Large right pleural effusion.", "No acute cardiopulmonary abnormality.", "Moderate cardiomegaly.",
           "Left lower lobe consolidation.")
TARGETS = {"none": 0.99, "jpeg_q50": 0.90}
PAPER = {"none": 1.00, "brightness_x2": 1.00, "crop_center_area0.5": 1.00, "jpeg_q50": 0.74, "rotate_25": 0.96,
         "resize_edge0.7": 0.97}  # MedSign Table 1, MIMIC-CXR row
N_KEYS, FWER_P, SIZE = 1000, 1e-6, 256
STORE = Requantize(8)


def read_one(extractor: SpectralExtractor, image: np.ndarray) -> Reading:
    """Blind read of one (H, W) image (images of different sizes are never batched)."""
    with torch.no_grad():
        return extractor.read(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])


def centre(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


def phantoms(count: int, seed_base: int) -> list[np.ndarray]:
    return [render_report(REPORTS[i % len(REPORTS)], seed=seed_base + i)[0].image.astype(np.float32)
            for i in range(count)]


def real_files() -> list[Path]:
    return sorted((DATA / "real-cxr-covid19-repo" / "png").glob("*.png")) + sorted((DATA / "real-dicom").glob("*.dcm"))


def working(path: Path) -> np.ndarray:
    """The pixels the verifier reads from ``path``."""
    return reading_pixels(read_image(path).pixels)[0]


def generated(folder: Path | None) -> list[np.ndarray] | None:
    """The original decoder's images of HELD-OUT reports from a decoder cache folder (the training-split items,
    which the null calibration saw, are left out)."""
    from medsign_forensics.localization.cache import cached_originals

    if folder is None or not (folder / "cache.json").is_file():
        return None
    return [image[0] for _, image in cached_originals(folder, held_out=True)]


def truth(attack: Attack) -> tuple[float, float]:
    """(rotation, scale) the reader should find. Empirically the reader reports a Pillow counter-clockwise
    rotation by d degrees as -d, and an edge resize by f as scale f."""
    if isinstance(attack, Rotate):
        return -float(attack.degrees), 1.0
    if isinstance(attack, Resize):
        return 0.0, float(attack.size(1000, 1000)[0] / 1000)
    return 0.0, 1.0


def robustness(extractor: SpectralExtractor, sets: dict[str, list[np.ndarray]], seed: int) -> list[dict]:
    """Mark, store, attack, store, read: one row per attack and set (phantom, real, all)."""
    config, rng = extractor.config, np.random.default_rng(seed)
    marked: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    for name, images in sets.items():
        keys = rng.integers(0, 2, size=(len(images), config.bits), dtype=np.uint8)
        marked[name] = ([STORE.exact(embed_image(im, k, config, psnr=40.5)) for im, k in zip(images, keys)], keys)
    rows = []
    for attack in TABLE1_ATTACKS:
        t_rot, t_scale = truth(attack)
        per: dict[str, dict[str, np.ndarray]] = {}
        for name, (images, keys) in marked.items():
            acc, sync, pres, rot, scl = [], [], [], [], []
            for i, (im, key) in enumerate(zip(images, keys)):
                r = read_one(extractor, STORE.exact(attack.exact(im, np.random.default_rng([seed, i]))))
                acc.append(float((r.bits[0] == key).mean()))
                rot.append(float(r.rotation[0])), scl.append(float(r.scale[0])), pres.append(float(r.presence[0]))
                sync.append(abs(rot[-1] - t_rot) <= 1.5 and abs(scl[-1] / t_scale - 1) <= 0.03)
            per[name] = {k: np.array(v) for k, v in
                         dict(acc=acc, sync=sync, pres=pres, rot=rot, scl=scl).items()}
        per["all"] = {k: np.concatenate([per[n][k] for n in marked]) for k in per[next(iter(marked))]}
        for name, v in per.items():
            rows.append(dict(attack=attack.name, set=name, n=len(v["acc"]), mean=v["acc"].mean(),
                             p5=np.percentile(v["acc"], 5), min=v["acc"].min(), ge95=(v["acc"] >= 0.95).mean(),
                             sync=v["sync"].mean(), pres_p5=np.percentile(v["pres"], 5),
                             gated=(v["pres"] >= extractor.config.presence_threshold).mean(),
                             rot=np.median(v["rot"]), scl=np.median(v["scl"]), truth=(t_rot, t_scale)))
    return rows


def expected_max_matches(bits: int, keys: int) -> float:
    """E[max of ``keys`` iid Binomial(bits, 1/2)] = sum over m >= 1 of P(max >= m), exact."""
    cdf = binom.cdf(np.arange(bits), bits, 0.5)  # P(X <= m - 1) for m = 1..bits
    return float(np.sum(1 - cdf**keys))


def null_stats(extractor: SpectralExtractor, images: list[np.ndarray], keys: np.ndarray) -> dict:
    """Bits, presence and best random-key match of unwatermarked images."""
    readings = [read_one(extractor, im) for im in images]
    bits = np.concatenate([r.bits for r in readings])
    presence = np.array([float(r.presence[0]) for r in readings])
    n, k = bits.shape
    means = bits.mean(axis=0)
    z2 = float((((means - 0.5) / np.sqrt(0.25 / n)) ** 2).sum())
    best = (bits[:, None, :] == keys[None]).sum(axis=2).max(axis=1)
    fwer = np.minimum(1.0, len(keys) * binom.sf(best - 1, k, 0.5))
    attributed = fwer <= FWER_P
    gate = presence >= extractor.config.presence_threshold
    return dict(n=n, mean_min=means.min(), mean_max=means.max(), worst=np.abs(means - 0.5).max(), chi2=z2,
                p=float(chi2.sf(z2, k)), pres_max=presence.max(), pres_p99=np.percentile(presence, 99),
                pres_ge=gate.mean(), best_mean=best.mean(), best_max=int(best.max()),
                attributed=int(attributed.sum()), attributed_gated=int((attributed & gate).sum()))


def sync_test(extractor: SpectralExtractor, count: int, seed: int) -> list[dict]:
    """Found geometry for marked phantoms under rotations and resizes outside Table 1."""
    config, rng = extractor.config, np.random.default_rng(seed)
    images = phantoms(count, 950_000)
    keys = rng.integers(0, 2, size=(count, config.bits), dtype=np.uint8)
    marked = [STORE.exact(embed_image(im, k, config, psnr=40.5)) for im, k in zip(images, keys)]
    rows = []
    for name in ("rotate_-40", "rotate_-10", "rotate_10", "rotate_40", "resize_edge0.75", "resize_edge1.5"):
        attack = get_attack(name)
        readings = [read_one(extractor, STORE.exact(attack.exact(im))) for im in marked]
        rows.append(dict(attack=name, truth=truth(attack), rot=[float(r.rotation[0]) for r in readings],
                         scl=[float(r.scale[0]) for r in readings],
                         acc=float(np.mean([(r.bits[0] == k).mean() for r, k in zip(readings, keys)])),
                         pres=min(float(r.presence[0]) for r in readings)))
    return rows


def read_speed(extractor: SpectralExtractor, images: list[np.ndarray], repeats: int = 3) -> float:
    """Mean milliseconds per blind read of one 256x256 image, one torch thread (first pass is warm-up)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for im in images[:10]:
        read_one(extractor, im)
    started = time.perf_counter()
    for _ in range(repeats):
        for im in images:
            read_one(extractor, im)
    torch.set_num_threads(threads)
    return 1000 * (time.perf_counter() - started) / (repeats * len(images))


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores available, no GPU used"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=100, help="marked phantoms (robustness)")
    parser.add_argument("--real", type=int, default=100, help="marked real radiographs (first N PNGs by name)")
    parser.add_argument("--null-phantoms", type=int, default=1000, help="unwatermarked phantoms (null)")
    parser.add_argument("--generated", type=Path, default=None,
                        help="medsign-decoder-cache folder of the original decoder's images (skipped if absent)")
    parser.add_argument("--sync-phantoms", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    extractor = load_default_extractor()  # the shipped folder, hash-checked
    config = extractor.config

    pngs = sorted((DATA / "real-cxr-covid19-repo" / "png").glob("*.png"))[: args.real]
    marked_sets = {"phantom": phantoms(args.phantoms, 900_000), "real": [centre(working(p)) for p in pngs]}
    robust = robustness(extractor, marked_sets, args.seed)
    speed = read_speed(extractor, [STORE.exact(im) for im in marked_sets["phantom"]])

    keys = np.random.default_rng(args.seed + 7).integers(0, 2, size=(N_KEYS, config.bits), dtype=np.uint8)
    jpeg = get_attack("jpeg_q50")
    null_sets: dict[str, list[np.ndarray]] = {
        f"real files, working size ({len(real_files())}: PNG + DICOM)": [working(p) for p in real_files()],
        f"phantoms seeds 910000.. ({args.null_phantoms})": [STORE.exact(im) for im in
                                                            phantoms(args.null_phantoms, 910_000)],
    }
    gen = generated(args.generated)
    gen_note = ""
    if gen is None:
        gen_note = f"Original-decoder set skipped: no cache at `{args.generated}` (pass --generated DIR)."
    else:
        null_sets[f"original decoder cache ({len(gen)})"] = [STORE.exact(im) for im in gen]
    null_rows = []
    for label, images in null_sets.items():
        null_rows.append((label, null_stats(extractor, images, keys)))
        null_rows.append((label + " + JPEG 50", null_stats(extractor, [jpeg.exact(im) for im in images], keys)))
    syncs = sync_test(extractor, args.sync_phantoms, args.seed + 11)

    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    k = config.bits
    need = next(m for m in range(k + 1) if N_KEYS * binom.sf(m - 1, k, 0.5) <= FWER_P)
    lines = [
        "# Spectral extractor evaluation (stage 1)", "",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}; torch threads {args.threads} (speed on 1); "
        f"1-minute load average at the end {os.getloadavg()[0]:.1f}",
        f"- Command: `{command}`",
        f"- Config: `{json.dumps(config.to_dict(), separators=(',', ':'))}`",
        f"- Marked images: {len(marked_sets['phantom'])} phantoms (seeds 900000..) + {len(marked_sets['real'])} real "
        "radiographs (first PNGs by name, working size, centre 256x256), one random key each, embed_image at "
        "40.5 dB, stored 8-bit, attacked (exact form), stored 8-bit, read blind",
        f"- Wall time: {time.perf_counter() - started:.0f} s", "",
        "## 1. Robustness (blind synchronisation)", "",
        "Sync: found rotation within 1.5 degrees and scale within 3 % of the truth. The reader reports Pillow's "
        "counter-clockwise `rotate_25` as rotation -25 and `resize_edge0.7` as scale 0.7 (median found values "
        "shown). Presence >= threshold: marked images the presence gate lets through. Target is for the mean "
        "bit accuracy; paper = MedSign Table 1, MIMIC-CXR.", "",
        f"| attack | set | n | mean acc | 5th pct | min | >= 0.95 | sync | truth rot / scale | median found "
        f"rot / scale | presence 5th pct | presence >= {config.presence_threshold} | target | met | paper |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in robust:
        target = TARGETS.get(r["attack"], 0.95)
        lines.append(
            f"| {r['attack']} | {r['set']} | {r['n']} | {r['mean']:.4f} | {r['p5']:.3f} | {r['min']:.3f} | "
            f"{r['ge95']:.2f} | {r['sync']:.2f} | {r['truth'][0]:g} / {r['truth'][1]:.2f} | {r['rot']:.1f} / "
            f"{r['scl']:.3f} | {r['pres_p5']:.2f} | {r['gated']:.3f} | >= {target:.2f} | "
            f"{'yes' if r['mean'] >= target else 'NO'} | "
            f"{PAPER[r['attack']]:.2f} |")
    lines += [
        "", "## 2. Null behaviour (unwatermarked images)", "",
        f"Bit-mean chi-square: sum over the {k} bits of z^2, z = (mean - 0.5) / sqrt(0.25 / n), vs chi2({k}). "
        f"Best match: the most bits any of {N_KEYS} random keys (one fixed rng) matches; for ANY bits the count per "
        f"key is Binomial({k}, 1/2), so the mean best should be {expected_max_matches(k, N_KEYS):.2f} (exact). "
        f"Attributed: min(1, {N_KEYS} x P(Binomial({k}, 1/2) >= best)) <= {FWER_P:g}, i.e. best >= {need}; "
        f"gated: also presence >= {config.presence_threshold}. Real files are read as the verifier reads them "
        "(float working-size pixels); phantoms and decoder images are stored 8-bit first.",
        *(["", gen_note] if gen_note else []), "",
        "| set | n | per-bit mean min-max | worst abs(mean-0.5) | chi2 | p | presence max | presence 99th | "
        f"presence >= {config.presence_threshold} | best match mean / max | attributed | attributed, gated |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in null_rows:
        lines.append(
            f"| {label} | {s['n']} | {s['mean_min']:.3f}-{s['mean_max']:.3f} | {s['worst']:.3f} | {s['chi2']:.1f} | "
            f"{s['p']:.3g} | {s['pres_max']:.2f} | {s['pres_p99']:.2f} | {s['pres_ge']:.3f} | "
            f"{s['best_mean']:.2f} / {s['best_max']} | {s['attributed']} | {s['attributed_gated']} |")
    lines += ["", "## 3. Speed", "",
              f"{speed:.1f} ms per blind read of a 256x256 image (one torch thread, mean over "
              f"{3 * len(marked_sets['phantom'])} reads).", "",
              f"## 4. Synchronisation outside Table 1 ({args.sync_phantoms} marked phantoms, seeds 950000..)", "",
              "| attack | expected rot / scale | found rotations | found scales | mean bit acc | min presence |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in syncs:
        lines.append(f"| {r['attack']} | {r['truth'][0]:g} / {r['truth'][1]:.2f} | "
                     f"{', '.join(f'{x:.1f}' for x in r['rot'])} | {', '.join(f'{x:.3f}' for x in r['scl'])} | "
                     f"{r['acc']:.4f} | {r['pres']:.2f} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
