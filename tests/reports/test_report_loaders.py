"""Plain report files (.txt, .csv, .jsonl) and MIMIC-CXR style folders, written small in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsign_forensics.errors import DatasetError, ReportError
from medsign_forensics.reports import LoadedReports, load_reports
from medsign_forensics.reports.mimic import parse_mimic_report, report_sections

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 Small left pleural effusion.
 No pneumonia.
"""

MIMIC_FINDINGS_ONLY = """                                 FINAL REPORT
 INDICATION:  Shortness of breath.

 FINDINGS:  Moderate cardiomegaly.  Mild pulmonary edema.
"""


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- plain files
def test_txt_one_report_per_non_empty_line(tmp_path: Path) -> None:
    path = write(tmp_path / "reports.txt", "Small left effusion.\n\n   \nCardiomegaly.\n")
    loaded = load_reports(path)
    assert isinstance(loaded, LoadedReports)
    assert [r.text for r in loaded] == ["Small left effusion.", "Cardiomegaly."]
    assert [r.report_id for r in loaded] == ["reports:1", "reports:4"]
    assert all(r.source == "reports.txt" for r in loaded)


def test_txt_accepts_a_string_path_and_a_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "r.txt", "\ufeffNo pneumothorax.\n")
    assert [r.text for r in load_reports(str(path))] == ["No pneumothorax."]


def test_csv_report_column_and_id(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", 'ID,Report\nA1,"Small right effusion, no pneumothorax."\nA2,Cardiomegaly.\n')
    loaded = load_reports(path)
    assert [(r.report_id, r.text) for r in loaded] == [
        ("A1", "Small right effusion, no pneumothorax."),
        ("A2", "Cardiomegaly."),
    ]


def test_csv_text_column_without_id_and_empty_rows_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "text,other\nEmphysema.,1\n,2\n  ,3\nNodule.,4\n")
    loaded = load_reports(path)
    assert [r.text for r in loaded] == ["Emphysema.", "Nodule."]
    assert loaded.skipped == 2
    assert len({r.report_id for r in loaded}) == 2


def test_csv_without_a_report_column(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "id,caption\n1,Cardiomegaly.\n")
    with pytest.raises(ReportError, match="no 'report' or 'text' column") as info:
        load_reports(path)
    assert "r.csv" in str(info.value)


def test_jsonl_fields(tmp_path: Path) -> None:
    lines = [{"id": 7, "report": "Left basilar atelectasis."}, {"text": "Right apical pneumothorax."}, {"report": ""}]
    path = write(tmp_path / "r.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n\n")
    loaded = load_reports(path)
    assert [(r.report_id, r.text) for r in loaded] == [
        ("7", "Left basilar atelectasis."),
        ("r:2", "Right apical pneumothorax."),
    ]
    assert loaded.skipped == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"report": "ok"}\nnot json\n', "line 2 is not valid JSON"),
        ('["a list"]\n', "line 1 is not a JSON object"),
        ('{"caption": "x"}\n', "line 1 has no 'report' or 'text' field"),
        ('{"report": 3}\n', "not a string"),
    ],
)
def test_jsonl_errors(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        load_reports(write(tmp_path / "r.jsonl", content))


@pytest.mark.parametrize("name", ["r.txt", "r.csv", "r.jsonl"])
@pytest.mark.parametrize("content", [b"", b"  \n\n"])
def test_empty_file_is_a_report_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(ReportError, match="is empty") as info:
        load_reports(path)
    assert str(path) in str(info.value)


def test_file_with_only_empty_reports(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no non-empty report"):
        load_reports(write(tmp_path / "r.csv", "report\n\n\"\"\n"))


@pytest.mark.parametrize("name", ["r.txt", "r.csv", "r.jsonl"])
def test_non_utf8_file_names_file_and_offset(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, b"report\nCardiomegaly " + b"\xff\xfe mild.\n")
    with pytest.raises(ReportError) as info:
        load_reports(path)
    message = str(info.value)
    assert str(path) in message and "not UTF-8" in message and "offset 20" in message and "0xff" in message


def test_missing_path_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a known dataset nor an existing path"):
        load_reports(tmp_path / "nope.txt")


# ---------------------------------------------------------------------------------------------------------- MIMIC
def test_mimic_sections() -> None:
    sections = report_sections(MIMIC_REPORT)
    assert sections["IMPRESSION"] == "Small left pleural effusion. No pneumonia."
    assert sections["COMPARISON"] == "None."
    assert sections["FINDINGS"].startswith("There is no focal consolidation")


def test_mimic_impression_first_findings_as_fallback() -> None:
    with_impression = parse_mimic_report(MIMIC_REPORT, report_id="p1/s1")
    assert (with_impression.impression, with_impression.findings) == ("Small left pleural effusion. No pneumonia.", "")
    fallback = parse_mimic_report(MIMIC_FINDINGS_ONLY, report_id="p1/s2")
    assert (fallback.impression, fallback.findings) == ("", "Moderate cardiomegaly. Mild pulmonary edema.")
    assert fallback.text == "Moderate cardiomegaly. Mild pulmonary edema."


def make_mimic(root: Path) -> Path:
    write(root / "files/p10/p10000032/s50414267.txt", MIMIC_REPORT)
    write(root / "files/p10/p10000032/s53189527.txt", MIMIC_FINDINGS_ONLY)
    write(root / "files/p11/p11000011/s51234567.txt", "FINAL REPORT\n INDICATION: Pain.\n")  # no caption
    write(root / "files/p11/p11000011/s52222222.txt", "")  # empty
    write(root / "files/p11/p11000011/notes.txt", "IMPRESSION: not a study report")  # wrong name
    write(root / "files/p11/p11000011/s50000001.jpg", b"\xff\xd8")  # images live beside reports
    return root


@pytest.mark.parametrize("subfolder", ["", "files"])
def test_mimic_folder(tmp_path: Path, subfolder: str) -> None:
    root = make_mimic(tmp_path / "mimic")
    loaded = load_reports(root / subfolder if subfolder else root)
    assert [r.report_id for r in loaded] == ["p10000032/s50414267", "p10000032/s53189527"]
    assert [r.text for r in loaded] == [
        "Small left pleural effusion. No pneumonia.",
        "Moderate cardiomegaly. Mild pulmonary edema.",
    ]
    assert loaded.skipped == 2
    assert all(r.source == "mimic-cxr" for r in loaded)


def test_mimic_non_utf8_report(tmp_path: Path) -> None:
    root = make_mimic(tmp_path / "mimic")
    bad = write(root / "files/p12/p12000000/s59999999.txt", b"IMPRESSION: caf\xe9 sign.")
    with pytest.raises(ReportError, match="offset 15") as info:
        load_reports(root)
    assert str(bad) in str(info.value)


def test_folder_without_mimic_layout(tmp_path: Path) -> None:
    write(tmp_path / "random/notes.txt", "IMPRESSION: x")
    with pytest.raises(DatasetError, match="no MIMIC-CXR style reports"):
        load_reports(tmp_path / "random")
