"""The findings prompt: a report restated as the findings it asserts, one short clause per finding.

mini-cxr's text encoder is trained from scratch on a few thousand reports, on two CPU cores. It learns which
words go with which lesions, but not negation or laterality: trained on reports as written it draws the findings
of "No pleural effusion" and puts a stated side right at chance (issue 15, BENCHMARKS.md). The findings parser
already resolves negation, hedging, side, zone and severity (its F1 against Open-i's MeSH tags is measured), so a
model may be trained and sampled on its reading instead: "moderate right lower consolidation. left effusion."
for a report asserting those two, :data:`NORMAL_PROMPT` for a report asserting none. The clauses are worded so
that the parser reads back exactly what it read from the report (tested), which keeps the localization map's
medical words meaningful on these prompts.
"""

from __future__ import annotations

from collections.abc import Callable

from medsign_forensics.errors import InputError
from medsign_forensics.reports.findings import Finding, Severity, Side, Zone
from medsign_forensics.reports.parser import parse_report

#: The prompt of a report that asserts no finding; no word of it is a finding or location word.
NORMAL_PROMPT = "normal chest radiograph."


def finding_clause(finding: Finding) -> str:
    """One finding as "[severity] [side] [zone] kind", leaving out what the report left unspecified."""
    words = [
        finding.severity.value if finding.severity is not Severity.UNSPECIFIED else "",
        finding.side.value if finding.side is not Side.UNSPECIFIED else "",
        finding.zone.value if finding.zone is not Zone.UNSPECIFIED else "",
        finding.kind.value,
    ]
    return " ".join(word for word in words if word)


def findings_prompt(text: str) -> str:
    """The report's present findings (neither negated nor hedged), one clause each in report order without
    repeats, or :data:`NORMAL_PROMPT` when it asserts none."""
    clauses = dict.fromkeys(finding_clause(finding) for finding in parse_report(text) if finding.present)
    return ". ".join(clauses) + "." if clauses else NORMAL_PROMPT


def prompt_function(form: str) -> Callable[[str], str]:
    """How a report becomes the prompt of a model trained on caption form ``form``: "report" (as written) or
    "findings" (:func:`findings_prompt`)."""
    if form == "findings":
        return findings_prompt
    if form == "report":
        return lambda text: text
    raise InputError(f"unknown caption form {form!r}; use report or findings")
