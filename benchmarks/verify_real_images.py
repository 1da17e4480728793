"""False positives: verify real images, unwatermarked phantoms and original-decoder images, as PNG and JPEG 50.

None of these images carries a registered watermark, so none may be attributed. The sets:

- real: every PNG and DICOM file under the shared real-data folder (--data);
- phantoms: with --phantoms N, N unwatermarked phantoms (random findings, seeds from FP_SEED_BASE, disjoint from
  every training, whitening and evaluation range), written as 8-bit PNGs;
- generated: with --generated DIR, the images I_o of a decoder-training latent cache (``cache.json`` +
  ``shard-*.npz``, made by the ORIGINAL mini-cxr decoder, no watermark) whose report is in the held-out split of
  open-i (TEST_FRACTION and SPLIT_SEED of medsign_forensics.localization.cache), written as 8-bit PNGs;
- each of them again after JPEG 50: every image written as a real JPEG file by Pillow at quality 50 (8-bit
  greyscale PNGs as they are; DICOMs and other PNGs from the pixels read_image decodes, quantised to 8 bits).

The registry is the one given (default: the demo registry) plus, with --random-keys N, N random keys issued into
a temporary copy of it, so that the family-wise statistics are exercised against a populated registry (the best
of N keys is compared).

    python benchmarks/verify_real_images.py [--extractor DIR] [--registry DIR] [--random-keys 1000]
                                            [--data ../shared/data] [--phantoms 1000] [--generated CACHE_DIR]

The issue's run: ``--random-keys 1000 --phantoms 1000 --generated /tmp/w/cache_all`` (200 held-out items).
Writes benchmarks/results/verify_real_images.md: per set the verdict counts, the best match (most matching bits,
smallest per-key and family-wise p-values), the pilot presence score distribution (max, 99th percentile,
fraction at or above the extractor's presence_threshold) and the null the p-values used; then the closest five
files, every file that was not "not detected", and every error.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (training.environment imports it)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from medsign_forensics.training.environment import machine_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SUFFIXES = {".png", ".dcm"}
FP_SEED_BASE = 3_000_000
JPEG_QUALITY = 50


def write_phantoms(count: int, folder: Path) -> list[Path]:
    """Render ``count`` unwatermarked phantoms into ``folder`` as 8-bit PNGs (as a user would hold them)."""
    from medsign_forensics.fileio import save_png
    from medsign_forensics.watermark.data import PhantomSource

    source = PhantomSource(count, size=256, seed_base=FP_SEED_BASE, findings_seed=FP_SEED_BASE)
    paths = []
    for index in range(count):
        paths.append(folder / f"phantom-{FP_SEED_BASE + index}.png")
        save_png(paths[-1], source.image(index))
    return paths


def write_generated(cache: Path, folder: Path) -> tuple[list[Path], int]:
    """The held-out items of a decoder latent cache as 8-bit PNGs in ``folder``; also how many were left out."""
    from medsign_forensics.fileio import save_png
    from medsign_forensics.localization.cache import cached_originals

    paths: list[Path] = []
    for item, image in cached_originals(cache, held_out=True):
        paths.append(folder / f"generated-{item.report_id}-{item.seed}.png")
        save_png(paths[-1], image[0])
    if not paths:
        raise SystemExit(f"no held-out items in the cache {cache}")
    return paths, len(cached_originals(cache, held_out=False))


def write_jpegs(paths: list[Path], folder: Path) -> tuple[list[Path], list[str]]:
    """Each file again as a Pillow JPEG (quality JPEG_QUALITY); files that cannot be read are listed instead."""
    from medsign_forensics.attacks.codec import to_uint8
    from medsign_forensics.errors import MedsignError
    from medsign_forensics.imageio import read_image

    folder.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for index, path in enumerate(paths):
        target = folder / f"{index:05d}-{path.stem}.jpg"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = None
                if path.suffix.lower() == ".png":
                    with Image.open(path) as opened:
                        if opened.mode in ("L", "RGB"):
                            image = opened.copy()
                if image is None:  # DICOM (or a PNG Pillow cannot write as JPEG): the pixels verify reads
                    image = Image.fromarray(to_uint8(read_image(path).pixels))
                image.save(target, format="JPEG", quality=JPEG_QUALITY)
        except (MedsignError, OSError, ValueError) as error:
            failed.append(f"{path.name}: {' '.join(str(error).split())}")
            continue
        written.append(target)
    return written, failed


def tally(counts: Counter) -> str:
    """Verdict counts as 'verdict n, ...' in a stable order."""
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def summary_row(name: str, verdicts: list, threshold: float | None) -> str:
    """One results-table row: verdicts, best match, presence distribution and null of one set."""
    counts = Counter(v.kind.value for v in verdicts)
    matched = [v.match for v in verdicts if v.match is not None]
    if matched:
        best = (f"{max(m.matched_bits for m in matched)}/{matched[0].bits} | "
                f"{min(m.p_value for m in matched):.2e} | {min(m.family_wise_p_value for m in matched):.2e}")
    else:
        best = "- | - | -"
    scores = np.array([m.presence for m in matched if m.presence is not None], dtype=np.float64)
    if scores.size:
        over = "-" if threshold is None else f"{np.mean(scores >= threshold):.4f} ({int(np.sum(scores >= threshold))})"
        presence = f"{scores.max():.2f} | {np.percentile(scores, 99):.2f} | {over}"
    else:
        presence = "n/a | n/a | n/a"
    nulls = ", ".join(f"{null} {n}" for null, n in sorted(Counter(m.null for m in matched).items())) or "-"
    return (f"| {name} | {len(verdicts)} | **{counts.get('attributed', 0)}** | {tally(counts)} | {best} | "
            f"{presence} | {nulls} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", type=Path, help="extractor folder (default: the shipped one)")
    parser.add_argument("--registry", type=Path, help="registry folder (default: the demo registry)")
    parser.add_argument("--random-keys", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--phantoms", type=int, default=0, help="also verify this many unwatermarked phantoms")
    parser.add_argument("--generated", type=Path, help="decoder latent cache folder: verify its held-out images")
    parser.add_argument("--no-jpeg", action="store_true", help="skip the JPEG 50 copies")
    parser.add_argument("--label", default="", help="what the extractor is, for the results file")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verify_real_images.md")
    args = parser.parse_args()
    wall_start = time.perf_counter()
    from medsign_forensics.config import DEFAULT_EXTRACTOR_DIR
    from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, load_policy
    from medsign_forensics.verify import DEFAULT_REGISTRY_DIR, Verifier

    real = sorted(p for p in args.data.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not real:
        raise SystemExit(f"no PNG or DICOM files under {args.data}")
    jpeg_failures: list[str] = []
    skipped = generated_count = 0
    with tempfile.TemporaryDirectory() as tmp:
        sets: list[tuple[str, list[Path]]] = [("real", real)]
        if args.phantoms:
            sets.append(("phantoms", write_phantoms(args.phantoms, Path(tmp) / "phantoms")))
        if args.generated:
            generated, skipped = write_generated(args.generated, Path(tmp) / "generated")
            generated_count = len(generated)
            sets.append(("generated (original decoder)", generated))
        if not args.no_jpeg:
            for index, (name, paths) in enumerate(list(sets)):
                jpegs, failed = write_jpegs(paths, Path(tmp) / f"jpeg-{index}")
                jpeg_failures += [f"{name}: {line}" for line in failed]
                sets.append((f"{name}, JPEG {JPEG_QUALITY}", jpegs))
        registry = Path(tmp) / "registry"
        shutil.copytree(args.registry or DEFAULT_REGISTRY_DIR, registry)
        issuer = IssuerKey.generate("Benchmark random keys")
        model = ModelInfo(name="none", version="0", weights_sha256="00" * 32)
        with Registry.open(registry) as opened:
            for index in range(args.random_keys):
                opened.issue(issuer, model=model, deployment=f"random-{index}", policy=load_policy(),
                             rng=np.random.default_rng(index))
            keys = len(opened.lookup())
        results: list[tuple[str, list, float]] = []
        manifest = (args.extractor or DEFAULT_EXTRACTOR_DIR) / "extractor.json"  # which extractor (and null) ran
        sha = json.loads(manifest.read_text(encoding="utf-8")).get("sha256", "?") if manifest.is_file() else "?"
        with Verifier.open(registry=registry, extractor=args.extractor) as verifier:
            threshold = getattr(verifier.extractor.config, "presence_threshold", None)
            candidates = len(verifier.candidates)
            null = verifier.null
            for name, paths in sets:
                start = time.perf_counter()
                verdicts = [verifier.try_verify_file(path) for path in paths]
                results.append((name, verdicts, time.perf_counter() - start))
    wall = time.perf_counter() - wall_start
    everything = [v for _, verdicts, _ in results for v in verdicts]
    seconds = sum(s for _, _, s in results)
    counts = Counter(v.kind.value for v in everything)
    matched = [v for v in everything if v.match is not None]
    closest = sorted(matched, key=lambda v: (v.match.family_wise_p_value, v.match.p_value))[:5]
    unusual = [(name, v) for name, verdicts, _ in results for v in verdicts if v.kind.value != "not detected"]
    options = (f" --extractor {args.extractor}" if args.extractor else "") + \
        (f" --registry {args.registry}" if args.registry else "") + f" --random-keys {args.random_keys}" + \
        (f" --phantoms {args.phantoms}" if args.phantoms else "") + \
        (f" --generated {args.generated}" if args.generated else "") + (" --no-jpeg" if args.no_jpeg else "")
    lines = [
        "# Verify on real and unwatermarked images (false positives)",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        f"- command: `python benchmarks/verify_real_images.py{options}`",
        f"- extractor: {args.label or (args.extractor or 'the shipped one')}; presence threshold "
        f"{'n/a' if threshold is None else threshold}; null: {null}; extractor.json sha256 {sha[:16]}",
        f"- data: {len(real)} files (PNG and DICOM) under {args.data}"
        + (f"; {args.phantoms} unwatermarked phantoms (8-bit PNG, seeds from {FP_SEED_BASE})" if args.phantoms
           else "")
        + (f"; {generated_count} images I_o of the original mini-cxr decoder from "
           f"{args.generated} (held-out open-i reports only, {skipped} training-split items left out; 8-bit PNG)"
           if args.generated else "")
        + ("" if args.no_jpeg else f"; each set again as Pillow JPEG quality {JPEG_QUALITY} files"),
        f"- registry: {keys} keys, {candidates} of the extractor's length ({args.random_keys} random keys added to "
        f"a copy of {args.registry or 'the demo registry'}); policy default (family-wise FPR 1e-6)",
        f"- time: {wall:.1f} s wall in all; verification {seconds:.1f} s ({len(everything) / seconds:.1f} files/s)",
        "",
        f"**Attributed: {counts.get('attributed', 0)} of {len(everything)}.** Verdicts: {tally(counts)}",
        "",
        "| set | files | attributed | verdicts | max matched bits | min p (per key) | min family-wise p | "
        "presence max | presence p99 | presence >= threshold | null |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ] + [summary_row(name, verdicts, threshold) for name, verdicts, _ in results] + [
        "",
        "Best match per file, matching bits (all sets): " + ", ".join(
            f"{bits}: {n}" for bits, n in sorted(Counter(v.matched_bits for v in matched).items())),
        "",
        "Closest five (smallest family-wise p-value, then per-key p-value):",
        "",
        "| file | matched bits | p (per key) | family-wise p | presence | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ] + [f"| {Path(v.file).name} | {v.matched_bits} | {v.p_value:.2e} | {v.match.family_wise_p_value:.2e} | "
         f"{'n/a' if v.match.presence is None else f'{v.match.presence:.2f}'} | {v.kind.value} |" for v in closest]
    if unusual:
        lines += ["", f"Files not reported as *not detected* ({len(unusual)}):", ""]
        lines += [f"- {name}: {Path(v.file).name}: {v.kind.value}"
                  + (f" ({v.matched_bits} bits, family-wise p {v.match.family_wise_p_value:.2e})" if v.match else "")
                  + (f" {v.error}" if v.error else "") for name, v in unusual[:50]]
        if len(unusual) > 50:
            lines.append(f"- ... and {len(unusual) - 50} more")
    if jpeg_failures:
        lines += ["", "Files that could not be written as JPEG:", ""] + [f"- {line}" for line in jpeg_failures]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
