"""False positives on real images: verify every PNG and DICOM file under the shared real-data folder.

None of these images was made by this project, so none may be attributed. With --phantoms N, N unwatermarked
phantoms (random findings, seeds from FP_SEED_BASE, disjoint from every training, whitening and evaluation
range) are written as 8-bit PNGs and verified too; none of them may be attributed either. The registry is the one given
(default: the demo registry) plus, with --random-keys N, N random keys issued into a temporary copy of it, so
that the family-wise statistics are exercised against a populated registry (the best of N keys is compared).

    python benchmarks/verify_real_images.py --extractor DIR [--registry DIR] [--random-keys 1000]
                                            [--data ../shared/data] [--phantoms 1000]

Writes benchmarks/results/verify_real_images.md: counts per verdict, the closest match over all files (most
matching bits, smallest p-values), every file that was not "not detected", and every error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from verify_speed import machine_line  # noqa: E402

SUFFIXES = {".png", ".dcm"}
FP_SEED_BASE = 3_000_000


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


def tally(counts: Counter) -> str:
    """Verdict counts as 'verdict n, ...' in a stable order."""
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", type=Path, help="extractor folder (default: the shipped one)")
    parser.add_argument("--registry", type=Path, help="registry folder (default: the demo registry)")
    parser.add_argument("--random-keys", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--phantoms", type=int, default=0, help="also verify this many unwatermarked phantoms")
    parser.add_argument("--label", default="", help="what the extractor is, for the results file")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verify_real_images.md")
    args = parser.parse_args()
    from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, load_policy
    from medsign_forensics.verify import DEFAULT_REGISTRY_DIR, Verifier

    files = sorted(p for p in args.data.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no PNG or DICOM files under {args.data}")
    real_count = len(files)
    with tempfile.TemporaryDirectory() as tmp:
        files += write_phantoms(args.phantoms, Path(tmp) / "phantoms")
        registry = Path(tmp) / "registry"
        shutil.copytree(args.registry or DEFAULT_REGISTRY_DIR, registry)
        issuer = IssuerKey.generate("Benchmark random keys")
        model = ModelInfo(name="none", version="0", weights_sha256="00" * 32)
        with Registry.open(registry) as opened:
            for index in range(args.random_keys):
                opened.issue(issuer, model=model, deployment=f"random-{index}", policy=load_policy(),
                             rng=np.random.default_rng(index))
            keys = len(opened.lookup())
        start = time.perf_counter()
        with Verifier.open(registry=registry, extractor=args.extractor) as verifier:
            verdicts = [verifier.try_verify_file(path) for path in files]
        seconds = time.perf_counter() - start
    counts = Counter(v.kind.value for v in verdicts)
    phantoms = Counter(v.kind.value for v in verdicts[real_count:])
    phantom_note = f" (phantoms alone: {tally(phantoms)})" if args.phantoms else ""
    matched = [v for v in verdicts if v.match is not None]
    closest = sorted(matched, key=lambda v: v.match.family_wise_p_value)[:5]
    unusual = [v for v in verdicts if v.kind.value not in ("not detected",)]
    histogram = Counter(v.matched_bits for v in matched)
    extractor_option = f" --extractor {args.extractor}" if args.extractor else ""
    lines = [
        "# Verify on real images (false positives)",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}",
        f"- command: `python benchmarks/verify_real_images.py{extractor_option}"
        f" --random-keys {args.random_keys}" + (f" --phantoms {args.phantoms}" if args.phantoms else "") + "`",
        f"- extractor: {args.label or (args.extractor or 'the shipped one')}",
        f"- data: {real_count} files (PNG and DICOM) under {args.data} and {args.phantoms} unwatermarked phantoms "
        f"(8-bit PNG, seeds from {FP_SEED_BASE}); registry: {keys} keys of the extractor's "
        f"length ({args.random_keys} random keys added to a copy of {args.registry or 'the demo registry'}); "
        "policy default (family-wise FPR 1e-6)",
        f"- time: {seconds:.1f} s ({len(files) / seconds:.1f} files/s)",
        "",
        f"**Attributed: {counts.get('attributed', 0)} of {len(files)}.** Verdicts: {tally(counts)}"
        + phantom_note,
        "",
        "Best match per file, matching bits (out of the key length): "
        + ", ".join(f"{bits}: {n}" for bits, n in sorted(histogram.items())),
        "",
        "Closest five (smallest family-wise p-value):",
        "",
        "| file | matched bits | p (per key) | family-wise p | verdict |",
        "| --- | --- | --- | --- | --- |",
    ] + [f"| {Path(v.file).name} | {v.matched_bits} | {v.p_value:.2e} | {v.match.family_wise_p_value:.2e} | "
         f"{v.kind.value} |" for v in closest]
    if unusual:
        lines += ["", "Files not reported as *not detected*:", ""]
        lines += [f"- {Path(v.file).name}: {v.kind.value} {v.error or ''}" for v in unusual]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
