"""Plain report files: ``.txt`` (one report per non-empty line), ``.csv`` and ``.jsonl`` (a ``report`` or
``text`` field, an optional ``id``).

A plain report has no sections, so its whole text becomes the IMPRESSION (the caption either way).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from medsign_forensics.errors import ReportError
from medsign_forensics.reports.corpus import LoadedReports, Report, keep_non_empty

TEXT_FIELDS = ("report", "text")
ID_FIELD = "id"


def read_utf8(path: Path, *, allow_empty: bool = False) -> str:
    """The file's text; a non-UTF-8 file (or an empty one, unless ``allow_empty``) is a :class:`ReportError`
    naming the file and, for bad bytes, the offset of the first one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReportError(f"cannot read the report file ({exc.strerror or exc}).", path=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(
            f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} cannot be decoded; "
            "re-save the file as UTF-8.",
            path=path,
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip() and not allow_empty:
        raise ReportError("is empty; give a file with at least one report.", path=path)
    return text


def _report(path: Path, report_id: str, text: str) -> Report:
    return Report(report_id=report_id, findings="", impression=" ".join(text.split()), source=path.name)


def _pick(fields: list[str], wanted: tuple[str, ...]) -> str | None:
    """The first of ``wanted`` among ``fields``, compared case-insensitively (CSV headers vary in case)."""
    by_lower = {field.strip().lower(): field for field in fields}
    return next((by_lower[name] for name in wanted if name in by_lower), None)


def _read_txt(path: Path, text: str) -> list[Report]:
    return [_report(path, f"{path.stem}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_csv(path: Path, text: str) -> list[Report]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = list(reader.fieldnames or [])
        text_field = _pick(fields, TEXT_FIELDS)
        if text_field is None:
            raise ReportError(
                f"has no 'report' or 'text' column (its header is {', '.join(fields) or 'empty'}); "
                "name the report column 'report' or 'text'.",
                path=path,
            )
        id_field = _pick(fields, (ID_FIELD,))
        reports = []
        for row in reader:
            row_id = (row.get(id_field) or "").strip() if id_field else ""
            reports.append(_report(path, row_id or f"{path.stem}:{reader.line_num}", row.get(text_field) or ""))
        return reports
    except csv.Error as exc:
        raise ReportError(f"is not valid CSV ({exc}); fix the file or save it as .txt or .jsonl.", path=path) from None


def _read_jsonl(path: Path, text: str) -> list[Report]:
    reports = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(
                f"line {n} is not valid JSON ({exc.msg}); write one JSON object per line.", path=path
            ) from None
        if not isinstance(record, dict):
            raise ReportError(f"line {n} is not a JSON object; write one object per line.", path=path)
        text_field = _pick(list(record), TEXT_FIELDS)
        if text_field is None:
            raise ReportError(f"line {n} has no 'report' or 'text' field; add one.", path=path)
        value = record[text_field]
        if value is not None and not isinstance(value, str):
            raise ReportError(f"line {n}: the {text_field!r} field is not a string.", path=path)
        id_field = _pick(list(record), (ID_FIELD,))
        record_id = str(record[id_field]).strip() if id_field and record[id_field] is not None else ""
        reports.append(_report(path, record_id or f"{path.stem}:{n}", value or ""))
    return reports


_READERS = {".txt": _read_txt, ".csv": _read_csv, ".jsonl": _read_jsonl}


def read_report_file(path: Path) -> LoadedReports:
    """Read a ``.txt``, ``.csv`` or ``.jsonl`` report file; a file without one non-empty report is an error."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ReportError(f"unsupported report file type {path.suffix!r}; use one of {', '.join(_READERS)}.", path=path)
    loaded = keep_non_empty(reader(path, read_utf8(path)), source=path.name)
    if not loaded:
        raise ReportError(f"holds no non-empty report ({loaded.skipped} empty); give at least one report.", path=path)
    return loaded
