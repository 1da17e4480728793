"""The findings prompt (reports/prompt.py): the parser reads back from it exactly what it read from the report."""

from __future__ import annotations

import itertools

import pytest

from medsign_forensics.diffusion.configs import CAPTION_FORMS, DataConfig
from medsign_forensics.diffusion.data import load_source
from medsign_forensics.errors import InputError
from medsign_forensics.reports import FindingKind, Side, Zone, load_reports, parse_report
from medsign_forensics.reports.findings import Finding, Severity
from medsign_forensics.reports.prompt import NORMAL_PROMPT, finding_clause, findings_prompt, prompt_function


def _present(text: str) -> list[tuple[object, ...]]:
    return [(f.kind, f.side, f.zone, f.severity) for f in parse_report(text) if f.present]


def test_every_clause_parses_back_to_its_finding() -> None:
    for kind, side, zone, severity in itertools.product(FindingKind, Side, Zone, Severity):
        if not kind.lateralised and (side is not Side.UNSPECIFIED or zone is not Zone.UNSPECIFIED):
            continue  # the parser gives cardiomegaly neither side nor zone
        finding = Finding(kind=kind, side=side, zone=zone, severity=severity)
        assert _present(finding_clause(finding) + ".") == [(kind, side, zone, severity)]


def test_reports_keep_their_present_findings_and_lose_the_rest() -> None:
    text = "No pleural effusion. Moderate right lower lobe consolidation, possibly pneumonia. Small left effusion."
    prompt = findings_prompt(text)
    assert prompt == "moderate right lower consolidation. mild left effusion."
    assert _present(prompt) == _present(text)
    assert findings_prompt("No acute cardiopulmonary abnormality. No effusion or pneumothorax.") == NORMAL_PROMPT
    assert parse_report(NORMAL_PROMPT) == []


def test_open_i_reports_round_trip() -> None:
    for report in load_reports("open-i")[:400]:
        assert sorted(set(_present(findings_prompt(report.text))), key=str) == sorted(
            set(_present(report.text)), key=str
        ), report.text


def test_a_findings_config_trains_on_findings_prompts() -> None:
    written = load_source(DataConfig(max_reports=30))
    prompts = load_source(DataConfig(max_reports=30, captions="findings"))
    assert len(written) == len(prompts) == 30
    for index in range(30):
        assert written.captions(index)[0] != prompts.captions(index)[0]  # the report as written comes first
        assert prompts.captions(index) == (findings_prompt(written.captions(index)[0]),)
    with pytest.raises(InputError, match="data.captions"):
        DataConfig(captions="impression")


def test_each_caption_form_has_its_prompt_function() -> None:
    text = "No pneumothorax. Small left effusion."
    assert {form: prompt_function(form)(text) for form in CAPTION_FORMS} == {
        "report": text, "findings": "mild left effusion."
    }
    with pytest.raises(InputError, match="caption form"):
        prompt_function("impression")
