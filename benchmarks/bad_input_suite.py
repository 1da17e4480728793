"""Bad-input suite: write >= 250 malformed or awkward files and scan them; every file must get one clear line.

Categories: zero-byte files, truncated files of every format, wrong extensions, huge declared dimensions
(decompression bombs), DICOM without pixel data, odd and inconsistent bit depths, multi-frame images,
pixel data of the wrong length, broken compressed DICOM, random bytes, valid magic numbers followed by
garbage, text and other non-image formats, tiny images, dangling links, compressed transfer syntaxes (RLE,
JPEG 2000, deflate; intact and truncated), and file names that a report must keep and defuse (formula-like
names, bytes that are not UTF-8). Some of these are legal but odd
(a 12-bit DICOM, a multi-page TIFF, a DICOM named .png): those must be verified normally; the rest must be
recorded as errors whose message is one line that names the file, with no traceback and no "internal error".

The corpus is written by medsign_forensics.evaluate.bad_inputs.write_suite (the scan tests use it too); this
script times a scan of it and writes benchmarks/results/bad_input_suite.md:

    python benchmarks/bad_input_suite.py --extractor DIR [--registry DIR] [--workers 2]

Without --extractor a tiny random whitened extractor is built in a temporary folder: reading errors do not
depend on the extractor, and the readable files are then verified by a model that knows no watermark.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from medsign_forensics.evaluate.bad_inputs import write_suite
from medsign_forensics.evaluate.synthetic import build_extractor
from medsign_forensics.scan import VerifierSettings, scan_folder
from medsign_forensics.scan_reports import read_jsonl
from medsign_forensics.training.environment import machine_line

REPO = Path(__file__).resolve().parents[1]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", type=Path, help="extractor folder (default: a tiny random one)")
    parser.add_argument("--registry", type=Path, help="registry folder (default: the demo registry)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bad_input_suite.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        extractor = args.extractor
        if extractor is None:
            extractor = build_extractor(tmp_path / "extractor")
        suite = write_suite(tmp_path / "suite")
        settings = VerifierSettings(registry=args.registry, extractor=extractor)
        start = time.perf_counter()
        summary = scan_folder(tmp_path / "suite", settings=settings, workers=args.workers,
                              jsonl=tmp_path / "report.jsonl")
        seconds = time.perf_counter() - start
        records = read_jsonl(tmp_path / "report.jsonl")
        rows = []
        problems = []
        by_category: dict[str, Counter] = {}
        for item in suite:
            record = records.get(str(item.path))
            if record is None:
                problems.append(f"{item.path.name}: no record")
                continue
            outcome = "error" if record["verdict"] == "error" else "verdict"
            by_category.setdefault(item.category, Counter())[outcome] += 1
            message = record.get("error") or ""
            if item.readable != (outcome == "verdict"):
                problems.append(f"{item.path.name}: expected {'a verdict' if item.readable else 'an error'}, "
                                f"got {record['verdict']}: {message}")
            if "\n" in message or "Traceback" in message or "internal error" in message:
                problems.append(f"{item.path.name}: unclear error: {message}")
            rows.append((item.category, item.path.name, record["verdict"], message.split(": ", 1)[-1]))
    extractor_option = f" --extractor {args.extractor}" if args.extractor else ""
    lines = [
        "# Bad-input suite",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}",
        f"- command: `python benchmarks/bad_input_suite.py{extractor_option}"
        f" --workers {args.workers}`",
        f"- extractor: {'given' if args.extractor else 'tiny random, whitened'}",
        "",
        f"{len(suite)} files; scan finished in {seconds:.1f} s ({summary.rate:.1f} files/s) with "
        f"{summary.counts.get('error', 0)} error lines and "
        f"{summary.total - summary.counts.get('error', 0)} verdicts; "
        f"{len(problems)} problem(s) (missing record, unexpected outcome, multi-line or internal error).",
        "",
        "| category | files | error lines | verdicts |",
        "| --- | --- | --- | --- |",
    ]
    for category, counts in sorted(by_category.items()):
        lines.append(f"| {category} | {sum(counts.values())} | {counts['error']} | {counts['verdict']} |")
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    lines += ["", "## Every file", "", "| category | file | verdict | message |", "| --- | --- | --- | --- |"]
    lines += [f"| {c} | `{n}` | {v} | {m.replace('|', '/')} |" for c, n, v, m in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="backslashreplace")
    print("\n".join(lines[:20 + len(by_category)]))


if __name__ == "__main__":
    main()
