"""Report corpora (Open-i, MIMIC-CXR style folders, plain files) and the findings parser.

    from medsign_forensics.reports import load_reports, parse_report
    reports = load_reports("open-i")            # 3,955 Open-i reports, minus the empty ones (reports.skipped)
    findings = parse_report(reports[0].text)    # -> [Finding(kind, side, zone, severity, negated, uncertain)]
"""

from medsign_forensics.reports.corpus import (
    KNOWN_DATASETS,
    PLAIN_SUFFIXES,
    LoadedReports,
    Report,
    clean_text,
    deduplicate,
    load_reports,
    split_reports,
)
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone
from medsign_forensics.reports.parser import merge_findings, parse_mesh, parse_report

__all__ = [
    "KNOWN_DATASETS",
    "PLAIN_SUFFIXES",
    "Finding",
    "FindingKind",
    "LoadedReports",
    "Report",
    "Severity",
    "Side",
    "Zone",
    "clean_text",
    "deduplicate",
    "load_reports",
    "merge_findings",
    "parse_mesh",
    "parse_report",
    "split_reports",
]
