"""Scan throughput: `scan` over N (default 1,000) 256x256 8-bit greyscale PNG files, end to end.

Counts everything a user waits for: listing, worker start-up (process pool, one extractor load per worker),
reading, extraction, matching, the JSONL and CSV reports. Speed does not depend on the extractor's weight
values, so without --extractor a whitened extractor of the default architecture with fresh weights is used.

    python benchmarks/scan_speed.py [--files 1000] [--workers 1 2] [--extractor DIR] [--keys 100]

Writes benchmarks/results/scan_speed.md. Target (issue 7): at least 10 images/s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from medsign_forensics.evaluate.synthetic import chest_like, random_key_registry, timing_extractor
from medsign_forensics.training.environment import load_average, machine_line

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--extractor", type=Path)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scan_speed.md")
    args = parser.parse_args()
    from medsign_forensics.scan import VerifierSettings, scan_folder

    rows = []
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        extractor = args.extractor or timing_extractor(tmp_path / "extractor")
        registry, _, _ = random_key_registry(tmp_path / "registry", args.keys)
        folder = tmp_path / "pngs"
        for index in range(args.files):
            sub = folder / f"{index // 100:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(chest_like(256, index)).save(sub / f"img{index:05d}.png")
        settings = VerifierSettings(registry=registry, extractor=extractor)
        for workers in args.workers:
            jsonl, out = tmp_path / f"w{workers}.jsonl", tmp_path / f"w{workers}.csv"
            start = time.perf_counter()
            summary = scan_folder(folder, settings=settings, workers=workers, jsonl=jsonl, csv_path=out)
            wall = time.perf_counter() - start
            assert summary.total == args.files and not summary.counts.get("error"), summary.counts
            rows.append((workers, wall, args.files / wall, dict(summary.counts)))
            print(f"workers {workers}: {wall:.1f} s, {args.files / wall:.1f} images/s, {dict(summary.counts)}")
    lines = [
        "# Scan throughput",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}; every worker (workers = 1: this process) runs torch on 1 thread",
        f"- command: `python benchmarks/scan_speed.py --files {args.files} --workers {' '.join(map(str, args.workers))}"
        f" --keys {args.keys}{' --extractor ' + str(args.extractor) if args.extractor else ''}`",
        f"- extractor: {'given' if args.extractor else 'default architecture, fresh weights (speed only)'}; "
        f"registry: {args.keys} keys; {args.files} PNG files of 256x256 8-bit grey in 10 folders",
        f"- 1/5/15-minute load average before: {load_before}, after: {load_average()} (the machine is shared with "
        "other work; higher load means slower runs)",
        "",
        "Wall time of `scan_folder` (listing, worker start-up, verification, JSONL and CSV reports).",
        "",
        "| workers | wall s | images/s | verdicts |",
        "| --- | --- | --- | --- |",
    ] + [f"| {w} | {wall:.1f} | {rate:.1f} | {counts} |" for w, wall, rate, counts in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
