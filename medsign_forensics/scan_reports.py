"""A scan's reports: the JSONL log of verdicts (one record per file, appended as verdicts come) and the CSV
table written from it at the end (:mod:`medsign_forensics.scan` runs the scan)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medsign_forensics.errors import InputError
from medsign_forensics.fileio import write_bytes

CSV_FIELDS = ("file", "verdict", "provenance_id", "p_value", "family_wise_p_value", "bit_accuracy", "matched_bits",
              "bits", "key_status", "deployment", "claimed_provenance_id", "sop_instance_uid", "failed_checks",
              "format", "width", "height", "error", "notes")


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    """Records of a JSONL report by file key (the last record of a key wins; unparsable lines are skipped)."""
    records: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise InputError(f"cannot read the JSONL report: {error.strerror}", path=path) from None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("file"), str) and "verdict" in record:
            records[record["file"]] = record
    return records


def write_csv(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One row per record with the columns of :data:`CSV_FIELDS` (written atomically).

    Text cells that a spreadsheet would run as a formula (starting with =, +, -, @, tab or carriage return:
    OWASP's CSV-injection rule) get a leading apostrophe; numbers are written as numbers. File names that are
    not valid UTF-8 keep their original bytes (surrogate escapes), as in the JSONL report.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in sorted(records, key=lambda r: r["file"]):
        row = dict(record)
        row["failed_checks"] = ";".join(c["name"] for c in record.get("checks", []) if c.get("status") == "fail")
        row["notes"] = "; ".join(record.get("notes", []))
        writer.writerow({name: _cell(row.get(name)) for name in CSV_FIELDS})
    write_bytes(path, buffer.getvalue().encode("utf-8", errors="surrogateescape"))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def check_writable(path: Path) -> None:
    """Create the report's folder, and prove it writable, before the scan starts (InputError otherwise)."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medsign-write-test-"):
            pass
    except OSError as error:
        raise InputError(f"the report cannot be written there ({error.strerror or error}); choose another "
                         "folder", path=path) from None
    if path.is_dir():
        raise InputError("is a folder; give a file name for the report", path=path)


def ends_with_newline(path: Path) -> bool:
    """Whether a non-empty file's last byte is a newline (a JSONL report cut mid-line is not)."""
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
