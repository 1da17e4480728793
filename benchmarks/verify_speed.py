"""Verify latency per file: PNG and DICOM at 256x256, a large PNG (read at the working size), a real DICOM.

Speed does not depend on the extractor's weight values, so without --extractor a freshly initialised extractor
of the default architecture is whitened on random images and used (a trained one gives the same timings).
The registry holds --keys random keys of an issuer made for the run (matching is one vectorised comparison).

    python benchmarks/verify_speed.py [--extractor DIR] [--keys 1000] [--repeats 20]

Writes benchmarks/results/verify_speed.md (median and 90th percentile of --repeats runs per file kind).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image

from medsign_forensics.evaluate.synthetic import chest_like, random_key_registry, timing_extractor
from medsign_forensics.training.environment import load_average, machine_line

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", type=Path)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads to time with")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verify_speed.md")
    args = parser.parse_args()
    from medsign_forensics.dicom import write_synthetic_study
    from medsign_forensics.verify import Verifier

    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        extractor = args.extractor or timing_extractor(tmp_path / "extractor")
        registry, issuer, entry = random_key_registry(tmp_path / "registry", args.keys)
        files = {}
        image = chest_like(256, 1)
        Image.fromarray(image).save(tmp_path / "x256.png")
        files["PNG 256x256"] = tmp_path / "x256.png"
        write_synthetic_study(tmp_path / "x256.dcm", image=image, report_text="No acute abnormality.",
                              model_name="mini-cxr", model_version="0.1.0", weights_sha256="cd" * 32,
                              provenance=entry.signed_record, signer=issuer)
        files["DICOM study 256x256 (all provenance checks)"] = tmp_path / "x256.dcm"
        Image.fromarray(chest_like(1024, 2)).save(tmp_path / "x1024.png")
        files["PNG 1024x1024 (read at 256x256)"] = tmp_path / "x1024.png"
        real = REPO.parent / "shared" / "data" / "real-dicom" / "siim-cr-chest-mono2.dcm"
        if real.is_file():
            files["real DICOM 1024x1024, JPEG Baseline"] = real
        rows = []
        with Verifier.open(registry=registry, extractor=extractor) as verifier:
            for threads in args.threads:
                torch.set_num_threads(threads)
                for label, path in files.items():
                    verifier.verify_file(path)  # warm-up
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        verifier.verify_file(path)
                        times.append(time.perf_counter() - start)
                    times.sort()
                    rows.append((label, threads, statistics.median(times), times[int(0.9 * (len(times) - 1))]))
    lines = [
        "# Verify speed",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()} (`medsign verify` and every scan worker use 1 torch thread)",
        f"- command: `python benchmarks/verify_speed.py --keys {args.keys} --repeats {args.repeats} --threads "
        f"{' '.join(map(str, args.threads))}"
        f"{' --extractor ' + str(args.extractor) if args.extractor else ''}`",
        f"- extractor: {'given' if args.extractor else 'default architecture, fresh weights (speed only)'}; "
        f"registry: {args.keys} keys; policy default",
        f"- 1/5/15-minute load average before: {load_before}, after: {load_average()} (shared machine)",
        "",
        "One `Verifier.verify_file` call per run (read, resize if needed, extract, match all keys, registry row "
        "check when attributed, DICOM provenance checks), after one warm-up call.",
        "",
        "| file | torch threads | median ms | p90 ms |",
        "| --- | --- | --- | --- |",
    ] + [f"| {label} | {threads} | {median * 1000:.0f} | {p90 * 1000:.0f} |" for label, threads, median, p90 in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
