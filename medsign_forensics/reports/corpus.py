"""Report corpora: the :class:`Report` record, loading any supported source, and the train/test split.

Every reader (Open-i archive, MIMIC-CXR-JPG folder, plain files) yields the same frozen :class:`Report`, so the
phantom world, the generator's captions and the benchmarks never care where a report came from.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsign_forensics.errors import DatasetError, InputError

log = logging.getLogger(__name__)

#: Names :func:`load_reports` accepts besides paths.
KNOWN_DATASETS: tuple[str, ...] = ("open-i",)
#: Plain report files :func:`load_reports` reads, by suffix.
PLAIN_SUFFIXES: tuple[str, ...] = (".txt", ".csv", ".jsonl")

# Open-i replaces names, dates and some ordinary words with "XXXX" (MIMIC uses "___"). "x-XXXX" is always
# "x-ray" in Open-i ("Normal chest x-XXXX"), so that one is restored; every other token is dropped.
_XRAY = re.compile(r"\bx-XXXX\b", re.IGNORECASE)
_ANON = re.compile(r"[\w-]*XXXX[\w-]*|_{3,}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_PUNCT_RUN = re.compile(r"[,;:]*([.!?])(\s*[.,;:!?])*|[,;:](\s*[,;:])+")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Remove Open-i "XXXX" (and MIMIC "___") anonymisation tokens and the debris they leave (doubled spaces,
    empty sentences).

    Why not substitute guessed words: the tokens stand for many different words (names, dates, "signs",
    "bones"); a wrong guess would put words into a report that the radiologist never wrote.
    """
    text = _XRAY.sub("x-ray", text)
    text = _ANON.sub(" ", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _PUNCT_RUN.sub(lambda m: m.group(1) or m.group(0)[0], text)
    return text.lstrip(" .,;:!?").rstrip(" ,;:")


@dataclass(frozen=True)
class Report:
    """One radiology report: its FINDINGS and IMPRESSION sections, MeSH tags where the corpus has them."""

    report_id: str
    findings: str
    impression: str
    mesh: tuple[str, ...] = ()
    source: str = ""

    @property
    def text(self) -> str:
        """The caption: cleaned FINDINGS then IMPRESSION, one space apart (a full stop is added between them
        when FINDINGS lacks one, so the last finding and the impression never read as one sentence)."""
        parts = [clean_text(part) for part in (self.findings, self.impression)]
        parts = [part for part in parts if part]
        if len(parts) == 2 and parts[0][-1] not in ".!?":
            parts[0] += "."
        return " ".join(parts)

    @property
    def is_empty(self) -> bool:
        """True when neither section holds any text (such reports are skipped by the loaders)."""
        return not (self.findings.strip() or self.impression.strip())


class LoadedReports(list[Report]):
    """The reports of one source, in a stable order, plus how many empty reports were skipped and from where.

    A plain ``list`` subclass so callers that only want the reports can ignore the extra attributes.
    """

    def __init__(self, reports: Iterable[Report] = (), *, skipped: int = 0, source: str = "") -> None:
        super().__init__(reports)
        self.skipped = skipped
        self.source = source


def keep_non_empty(reports: Iterable[Report], *, source: str) -> LoadedReports:
    """Drop reports with neither findings nor impression, count them, and note the count in the log."""
    kept: list[Report] = []
    skipped = 0
    for report in reports:
        if report.is_empty:
            skipped += 1
        else:
            kept.append(report)
    if skipped:
        log.info("%s: skipped %d report(s) with neither findings nor impression", source, skipped)
    return LoadedReports(kept, skipped=skipped, source=source)


def load_reports(source: str | Path) -> LoadedReports:
    """Load every report of ``source``: a dataset name (``"open-i"``), a MIMIC-CXR-JPG style folder, or a
    ``.txt`` / ``.csv`` / ``.jsonl`` report file. Reports with no text are skipped and counted (``.skipped``).
    """
    # Readers import Report from this module, so they are imported here rather than at the top.
    if isinstance(source, str) and source.strip().lower() in KNOWN_DATASETS:
        from medsign_forensics.reports.openi import read_openi

        return read_openi()
    path = Path(source)
    if path.is_dir():
        from medsign_forensics.reports.mimic import read_mimic_folder

        return read_mimic_folder(path)
    if path.is_file() and path.suffix.lower() in PLAIN_SUFFIXES:
        from medsign_forensics.reports.textfiles import read_report_file

        return read_report_file(path)
    what = "is not a supported report file" if path.is_file() else "is neither a known dataset nor an existing path"
    raise DatasetError(
        f"report source {str(source)!r} {what}; give one of the datasets {', '.join(KNOWN_DATASETS)}, "
        f"a MIMIC-CXR-JPG style folder (files/pNN/pNNNNNNNN/sNNNNNNNN.txt) or a "
        f"{', '.join(PLAIN_SUFFIXES)} file."
    )


def normalised_text(report: Report) -> str:
    """The report's caption reduced to lower-case words, so trivially different copies compare equal."""
    return " ".join(re.findall(r"[a-z0-9]+", report.text.lower()))


def deduplicate(reports: Iterable[Report]) -> list[Report]:
    """Keep the first report of every normalised text (Open-i repeats many normal reports word for word)."""
    seen: set[str] = set()
    unique: list[Report] = []
    for report in reports:
        key = normalised_text(report)
        if key not in seen:
            seen.add(key)
            unique.append(report)
    return unique


def split_fraction(report_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by the id and the seed: SHA-256, so it is the same on every run and machine."""
    digest = hashlib.sha256(f"{seed}\x00{report_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_reports(
    reports: Sequence[Report], *, test_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Report], list[Report]]:
    """Deduplicate by normalised text, then split into (train, test) by a hash of report id and seed.

    Deduplicating first keeps identical reports from landing on both sides; hashing ids (not shuffling)
    keeps a report on the same side when the corpus grows or is read in another order.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}; pass for example 0.1.")
    train: list[Report] = []
    test: list[Report] = []
    for report in deduplicate(reports):
        (test if split_fraction(report.report_id, seed) < test_fraction else train).append(report)
    return train, test
