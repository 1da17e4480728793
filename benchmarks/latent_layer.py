"""The latent layer (Gaussian Shading in z_T) on mini-cxr: robustness, distribution, false positives, cost.

``--model`` and ``--deployment`` default to the shipped mini-cxr and demo deployment.

Parts (``--parts``, default all), each appending its section to ``--out`` (markdown) and ``--json``:

- ``held-out``: N held-out Open-i reports (the decoder training's split, seeds of its held-out items), each
  generated three ways with the same sampler and the conditioning ``medsign generate`` gives the model (its
  prompt form and layout): with a latent-layer key (fixed key, secret from ``--seed``), plain with the item's own
  seed, and plain with a second seed set (item seed + 1,000,000). The marked images
  are read back under every attack, (a) decoded by the plain VAE (latent layer only, no pilots: geometry is
  not undone) and (b) decoded by the shipped demo deployment's watermark layer (both layers; the pilots'
  rotation and scale are undone before inversion). Bit accuracy per attack (mean and 5th percentile) and the
  TPR at the default policy (family-wise FPR 1e-6 over ``--keys`` keys: the matches that needs).
- ``distribution``: finding-classifier probabilities and the Frechet distance (classifier features) of the
  marked images against the plain images of the same reports, beside plain seed set A against plain set B (the
  noise floor). Also a Kolmogorov-Smirnov test of the marked z_T values against N(0, 1).
- ``unmarked``: every real file under ``--data``, the N plain images and ``--phantoms`` phantoms, read against
  ``--keys`` random keys with random secrets: how many are attributed, and the smallest family-wise p-value.
- ``cost``: seconds per 256 x 256 image on one thread (median of 5) for several inversion step counts.
- ``steps``: bit accuracy against the number of inversion steps (how the default was chosen).

Command of the issue's run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/latent_layer.py --reports 200 --phantoms 1000 --keys 1000 \\
        --work /tmp/latent-bench --data ../shared/data
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

from medsign_forensics.attacks.library import get_attack  # noqa: E402
from medsign_forensics.diffusion import decode, load_model  # noqa: E402
from medsign_forensics.diffusion.conditioning import sample_reports  # noqa: E402
from medsign_forensics.key import family_p_value, identification_threshold, p_value  # noqa: E402
from medsign_forensics.training.environment import machine_line  # noqa: E402
from medsign_forensics.watermark.latent import ISSUED_CONFIG, LatentConfig, LatentMark  # noqa: E402
from medsign_forensics.watermark.latent_reader import LatentReader  # noqa: E402

ATTACKS = ("none", "brightness_x2", "jpeg_q50", "resize_edge0.7", "crop_center_area0.5", "rotate_25",
           "blur_sigma1_k5", "dicomwl_c2048_w3072")
FPR = 1e-6
PLAIN_B_OFFSET = 1_000_000
SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff"}


def benchmark_mark(seed: int, bits: int = 48) -> LatentMark:
    """The benchmark's key and secret, reproducible from ``seed`` (a real deployment draws its secret randomly)."""
    rng = np.random.default_rng(seed)
    return LatentMark(key=rng.integers(0, 2, bits).astype(np.uint8), secret=rng.bytes(32), config=ISSUED_CONFIG)


def generate_sets(model, items, mark: LatentMark, work: Path, steps: int) -> dict[str, np.ndarray]:
    """Marked latents x0, marked z_T, plain A and plain B images, sampled in ``steps`` (cached in ``work``)."""
    cache = work / "generated.npz"
    if cache.is_file():
        return dict(np.load(cache))
    shape = (model.latent_channels, model.image_size // model.vae_scale_factor,
             model.image_size // model.vae_scale_factor)
    out: dict[str, list[np.ndarray]] = {"marked_x0": [], "marked_z": [], "plain_a": [], "plain_b": []}
    start = time.perf_counter()
    for n, item in enumerate(items):
        z = mark.initial_noise(shape, torch.Generator().manual_seed(item.seed))
        # as `medsign generate` samples: the model's prompt form and layout
        marked = sample_reports(model, [item.text], seed=item.seed, latents=z, output="latents", steps=steps)
        out["marked_x0"].append(marked.latents[0].numpy())
        out["marked_z"].append(z[0].numpy())
        for name, seed in (("plain_a", item.seed), ("plain_b", item.seed + PLAIN_B_OFFSET)):
            plain = sample_reports(model, [item.text], seed=seed, output="images", steps=steps)
            out[name].append(plain.images[0].mean(0).numpy())
        print(f"generated {n + 1}/{len(items)} ({time.perf_counter() - start:.0f} s)", flush=True)
    arrays = {name: np.stack(values) for name, values in out.items()}
    np.savez_compressed(cache, **arrays)
    return arrays


def quantised(image: np.ndarray) -> np.ndarray:
    return (np.rint(np.clip(image, 0, 1) * 255) / 255).astype(np.float32)


def matches(mark: LatentMark, read) -> int:
    """Bits of ``mark`` read from one :meth:`LatentReader.noise_batch` result; -1 when the image is unreadable
    (refused by the reader, or too little of it left to hold every bit)."""
    from medsign_forensics.errors import InputError

    if read is None:
        return -1
    try:
        return int((mark.read(read[0], read[1]).bits == mark.key).sum())
    except InputError:
        return -1


def part_held_out(model, items, sets, mark, reader, args, report, results) -> None:
    from medsign_forensics.generate import load_default_deployment
    from medsign_forensics.reading import load_default_extractor
    from medsign_forensics.watermark.deployment import load_deployment

    deployment = load_default_deployment() if args.deployment is None else load_deployment(args.deployment)
    vae = deployment.watermarked_vae(model)
    extractor = load_default_extractor()
    needed = identification_threshold(mark.key.size, args.keys, FPR)
    variants = {"latent only": None, "both layers (demo deployment)": vae}
    rows = []
    table: dict[str, dict[str, list[int]]] = {}
    unreadable: dict[tuple[str, str], int] = {}
    start = time.perf_counter()
    for i in range(len(items)):
        x0 = torch.from_numpy(sets["marked_x0"][i])[None]
        batch, geometries, keys = [], [], []
        for variant, decoder in variants.items():
            with torch.no_grad():
                image = quantised(decode(model, x0, vae=decoder)[0].mean(0).numpy())
            for name in ATTACKS:
                attacked = quantised(get_attack(name).exact(image, np.random.default_rng(i)))
                geometry = None
                if decoder is not None:
                    with torch.no_grad():
                        found = extractor.read(torch.from_numpy(attacked)[None, None])
                    geometry = (float(found.rotation[0]), float(found.scale[0]))
                batch.append(attacked)
                geometries.append(geometry)
                keys.append((variant, name))
        for (variant, name), read in zip(keys, reader.noise_batch(batch, geometries)):
            matched = matches(mark, read)
            table.setdefault(variant, {}).setdefault(name, []).append(matched)
            if matched < 0:
                unreadable[(variant, name)] = unreadable.get((variant, name), 0) + 1
        print(f"read {i + 1}/{len(items)} ({time.perf_counter() - start:.0f} s)", flush=True)
    for variant, per_attack in table.items():
        for name, counts in per_attack.items():
            # an unreadable image (too much of it clipped) counts as chance for accuracy, never as detected
            acc = np.where(np.asarray(counts) < 0, 0.5, np.asarray(counts) / mark.key.size)
            tpr = float(np.mean(np.asarray(counts) >= needed))
            skipped = unreadable.get((variant, name), 0)
            rows.append(f"| {variant} | {name} | {acc.mean():.4f} | {np.percentile(acc, 5):.3f} | {tpr:.3f} | "
                        f"{skipped} |")
            results.setdefault("held_out", {}).setdefault(variant, {})[name] = {
                "bit_accuracy": float(acc.mean()), "p5": float(np.percentile(acc, 5)), "tpr": tpr,
                "unreadable": skipped}
    report += [
        f"## Held-out reports: bit accuracy per attack ({len(items)} reports, {mark.key.size}-bit key)", "",
        f"TPR = share of images attributed at family-wise FPR {FPR:g} over {args.keys} keys (>= {needed} of "
        f"{mark.key.size} bits match). Inversion: {reader.steps} DDIM steps.", "",
        "Unreadable: images the latent layer refuses (over 90 % of the pixels clipped); counted as 0.5 accuracy and "
        "not detected.", "",
        "| layers | attack | bit accuracy (mean) | 5th percentile | TPR | unreadable |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows, ""]


def part_distribution(model, sets, report, results) -> None:
    from medsign_forensics.evaluate.metrics import frechet_distance
    from medsign_forensics.phantom.classifier import extract_features, load_classifier, predict

    classifier = load_classifier()
    marked = np.stack([quantised(decode(model, torch.from_numpy(x)[None])[0].mean(0).detach().numpy())
                       for x in sets["marked_x0"]])
    plain_a, plain_b = quantised(sets["plain_a"]), quantised(sets["plain_b"])
    probs = {name: predict(classifier, images) for name, images in
             (("marked", marked), ("plain_a", plain_a), ("plain_b", plain_b))}
    feats = {name: extract_features(classifier, images) for name, images in
             (("marked", marked), ("plain_a", plain_a), ("plain_b", plain_b))}
    fd_marked = frechet_distance(feats["marked"], feats["plain_a"]).distance
    fd_floor = frechet_distance(feats["plain_b"], feats["plain_a"]).distance
    gap_marked = float(np.abs(probs["marked"].mean(0) - probs["plain_a"].mean(0)).max())
    gap_floor = float(np.abs(probs["plain_b"].mean(0) - probs["plain_a"].mean(0)).max())
    mad_marked = float(np.abs(probs["marked"] - probs["plain_a"]).mean())
    mad_floor = float(np.abs(probs["plain_b"] - probs["plain_a"]).mean())
    per_image = np.array([scipy_stats.kstest(z.ravel(), "norm").pvalue for z in sets["marked_z"]])
    pooled = scipy_stats.kstest(sets["marked_z"].ravel(), "norm")
    results["distribution"] = {"frechet_marked_vs_plain_a": fd_marked, "frechet_plain_b_vs_plain_a": fd_floor,
                               "max_label_rate_gap_marked": gap_marked, "max_label_rate_gap_floor": gap_floor,
                               "mean_abs_prob_diff_marked": mad_marked, "mean_abs_prob_diff_floor": mad_floor,
                               "ks_per_image_rejected_at_5pct": float(np.mean(per_image < 0.05)),
                               "ks_pooled_statistic": float(pooled.statistic), "ks_pooled_p": float(pooled.pvalue)}
    report += [
        "## Distribution preservation", "",
        "| comparison (same reports) | Frechet distance (classifier features) | largest gap in a finding's mean "
        "probability | mean per-image probability difference |", "| --- | --- | --- | --- |",
        f"| latent-marked vs plain seeds A | {fd_marked:.3f} | {gap_marked:.4f} | {mad_marked:.4f} |",
        f"| plain seeds B vs plain seeds A (noise floor) | {fd_floor:.3f} | {gap_floor:.4f} | {mad_floor:.4f} |", "",
        f"Kolmogorov-Smirnov of each marked z_T (4,096 values) against N(0, 1): {np.mean(per_image < 0.05):.3f} of "
        f"the {len(per_image)} images rejected at the 5 % level (chance: 0.05). Pooled over all {sets['marked_z'].size}"
        f" values of this ONE secret: statistic {pooled.statistic:.5f}, p = {pooled.pvalue:.2g} (one secret fixes "
        "every element's sign, so a deployment's images share a sign pattern; N(0, I) holds over the secret).", ""]


def unmarked_images(args, sets) -> list[tuple[str, np.ndarray]]:
    from medsign_forensics.imageio import read_image
    from medsign_forensics.reading import reading_pixels
    from medsign_forensics.watermark.data import PhantomSource

    images: list[tuple[str, np.ndarray]] = []
    real = sorted(p for p in args.data.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES) \
        if args.data.is_dir() else []
    for path in real:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pixels, _ = reading_pixels(read_image(path).pixels)
            except Exception as error:  # a file the reader refuses is not a false positive; count it
                print(f"skipped {path}: {error}", flush=True)
                continue
        images.append(("real", pixels))
    images += [("plain mini-cxr", quantised(image)) for image in sets["plain_a"]]
    source = PhantomSource(args.phantoms, size=256, seed_base=7_000_000, findings_seed=7_000_000)
    images += [("phantom", quantised(source.image(i))) for i in range(args.phantoms)]
    return images


def part_unmarked(sets, reader, args, report, results) -> None:
    rng = np.random.default_rng(args.seed + 1)
    marks = [LatentMark(key=rng.integers(0, 2, 48).astype(np.uint8), secret=rng.bytes(32)) for _ in range(args.keys)]
    needed_p = FPR
    tallies: dict[str, list[float]] = {}
    start = time.perf_counter()
    images = unmarked_images(args, sets)
    for first in range(0, len(images), 8):
        chunk = images[first:first + 8]
        for (family, _), read in zip(chunk, reader.noise_batch([p for _, p in chunk], [None] * len(chunk))):
            best = max(matches(m, read) for m in marks)
            # nothing readable (-1): cannot be attributed
            tallies.setdefault(family, []).append(1.0 if best < 0 else family_p_value(p_value(best, 48), len(marks)))
        print(f"unmarked: {first + len(chunk)}/{len(images)} ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = []
    for family, ps in tallies.items():
        attributed = int(np.sum(np.asarray(ps) <= needed_p))
        rows.append(f"| {family} | {len(ps)} | {attributed} | {min(ps):.3g} |")
        results.setdefault("unmarked", {})[family] = {"files": len(ps), "attributed": attributed,
                                                      "smallest_family_p": float(min(ps))}
    report += ["## Unwatermarked images against random latent-layer keys", "",
               f"{args.keys} random keys, each with its own random secret; attributed = family-wise p <= {FPR:g}.",
               "", "| images | count | attributed | smallest family-wise p |", "| --- | --- | --- | --- |", *rows, ""]


def part_cost(model, items, sets, report, results) -> None:
    torch.set_num_threads(1)
    image = quantised(decode(model, torch.from_numpy(sets["marked_x0"][0])[None])[0].mean(0).detach().numpy())
    rows = []
    for steps in (5, 10, 25, 50):
        reader = LatentReader(model, steps=steps)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            reader.noise(image)
            times.append(time.perf_counter() - start)
        rows.append(f"| {steps} | {np.median(times):.3f} |")
        results.setdefault("cost_s", {})[str(steps)] = float(np.median(times))
    torch.set_num_threads(2)
    report += ["## Verify cost of the latent layer (one thread, 256 x 256, median of 5)", "",
               "| inversion steps | seconds per image (prepare + VAE encode + inversion) |", "| --- | --- |",
               *rows, ""]


def part_steps(model, sets, mark, args, report, results) -> None:
    """Bit accuracy against inversion steps on the first ``--steps-images`` marked images (plain decoder)."""
    rows = []
    count = min(args.steps_images, len(sets["marked_x0"]))
    images = [quantised(decode(model, torch.from_numpy(x)[None])[0].mean(0).detach().numpy())
              for x in sets["marked_x0"][:count]]
    for steps in (5, 10, 25):
        reader = LatentReader(model, steps=steps)
        for name in ("none", "jpeg_q50", "brightness_x2"):
            attacked = [quantised(get_attack(name).exact(image, np.random.default_rng(i)))
                        for i, image in enumerate(images)]
            counts = [matches(mark, read) for read in reader.noise_batch(attacked, [None] * len(attacked))]
            accs = [0.5 if c < 0 else c / mark.key.size for c in counts]
            rows.append(f"| {steps} | {name} | {np.mean(accs):.4f} | {np.min(accs):.3f} |")
            results.setdefault("accuracy_by_steps", {}).setdefault(str(steps), {})[name] = float(np.mean(accs))
    report += [f"## Bit accuracy against inversion steps (first {count} held-out images, latent layer only)", "",
               "| inversion steps | attack | bit accuracy (mean) | lowest |", "| --- | --- | --- | --- |", *rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--phantoms", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=LatentConfig().inversion_steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/latent-bench"))
    parser.add_argument("--parts", default="held-out,distribution,unmarked,cost,steps")
    parser.add_argument("--steps-images", type=int, default=40)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped mini-cxr)")
    parser.add_argument("--deployment", type=Path, default=None,
                        help="deployment of the 'both layers' rows (default: the shipped demo one)")
    parser.add_argument("--sample-steps", type=int, default=25,
                        help="sampling steps of the generated images (cached in --work: one folder per value)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "latent_layer.md")
    args = parser.parse_args()
    from medsign_forensics.localization.cache import split_items

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",")]
    model = load_model(args.model)
    items = split_items("open-i", held_out=True, n=args.reports, seed=0)
    mark = benchmark_mark(args.seed)
    reader = LatentReader(model, steps=args.steps)
    started = time.perf_counter()
    sets = generate_sets(model, items, mark, args.work, args.sample_steps)
    report = ["# Latent layer (Gaussian Shading) on mini-cxr", "",
              f"- date: {datetime.now(UTC).isoformat(timespec='minutes')}; machine: {machine_line()}",
              f"- command: `python benchmarks/latent_layer.py {' '.join(sys.argv[1:])}`", ""]
    results: dict = {"reports": len(items), "steps": args.steps}
    if "held-out" in parts:
        part_held_out(model, items, sets, mark, reader, args, report, results)
    if "distribution" in parts:
        part_distribution(model, sets, report, results)
    if "unmarked" in parts:
        part_unmarked(sets, reader, args, report, results)
    if "cost" in parts:
        part_cost(model, items, sets, report, results)
    if "steps" in parts:
        part_steps(model, sets, mark, args, report, results)
    report.append(f"Total wall time {time.perf_counter() - started:.0f} s.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
