"""MIMIC-CXR style report folders: ``files/pNN/pNNNNNNNN/sNNNNNNNN.txt``, one free-text report per study.

The caption of a MIMIC report is its IMPRESSION section (what RoentGen-style generators are trained on); when a
report has no IMPRESSION its FINDINGS section stands in. The other sections (INDICATION, COMPARISON, ...) are
not kept: they describe the request, not the image.
"""

from __future__ import annotations

import re
from pathlib import Path

from medsign_forensics.errors import DatasetError
from medsign_forensics.reports.corpus import LoadedReports, Report, keep_non_empty
from medsign_forensics.reports.textfiles import read_utf8

SOURCE = "mimic-cxr"
_LAYOUT = re.compile(r"^p\d{2}/p\d+/s\d+\.txt$")
# A section header is an upper-case name at the start of a line followed by a colon ("IMPRESSION:").
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/()-]*[A-Z)])[ \t]*:", re.MULTILINE)
_IMPRESSION_NAMES = ("IMPRESSION", "FINDINGS AND IMPRESSION", "IMPRESSIONS")
_FINDINGS_NAMES = ("FINDINGS",)


def report_sections(text: str) -> dict[str, str]:
    """Section name -> its text (whitespace collapsed), for every upper-case ``NAME:`` header in ``text``."""
    headers = list(_HEADER.finditer(text))
    sections: dict[str, str] = {}
    for header, following in zip(headers, [*headers[1:], None]):
        end = following.start() if following else len(text)
        body = " ".join(text[header.end() : end].split())
        name = " ".join(header.group(1).split())
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def parse_mimic_report(text: str, *, report_id: str) -> Report:
    """A MIMIC report -> Report with the IMPRESSION, or with the FINDINGS only when there is no IMPRESSION."""
    sections = report_sections(text)
    impression = next((sections[name] for name in _IMPRESSION_NAMES if sections.get(name)), "")
    findings = "" if impression else next((sections[name] for name in _FINDINGS_NAMES if sections.get(name)), "")
    return Report(report_id=report_id, findings=findings, impression=impression, source=SOURCE)


def find_report_files(folder: Path) -> list[Path]:
    """The ``sNNNNNNNN.txt`` files under ``folder/files`` (or ``folder`` itself when it is the files folder)."""
    files_dir = folder / "files" if (folder / "files").is_dir() else folder
    found = [
        path
        for path in files_dir.glob("p*/p*/s*.txt")
        if path.is_file() and _LAYOUT.match(path.relative_to(files_dir).as_posix())
    ]
    return sorted(found)


def read_mimic_folder(folder: Path) -> LoadedReports:
    """Every report of a MIMIC-CXR style folder, in path order; ids are ``pNNNNNNNN/sNNNNNNNN``."""
    paths = find_report_files(folder)
    if not paths:
        raise DatasetError(
            "holds no MIMIC-CXR style reports (files/pNN/pNNNNNNNN/sNNNNNNNN.txt); point at the folder that "
            "contains 'files', or give a .txt, .csv or .jsonl report file.",
            path=folder,
        )
    reports = [
        parse_mimic_report(read_utf8(path, allow_empty=True), report_id=f"{path.parent.name}/{path.stem}")
        for path in paths
    ]
    return keep_non_empty(reports, source=SOURCE)
