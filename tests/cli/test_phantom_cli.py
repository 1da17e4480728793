"""`medsign phantom` and `medsign phantom dataset` end to end, including bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.cli.main import app
from medsign_forensics.reports import openi

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["phantom", *args])


def test_done_means_right_effusion(tmp_path: Path) -> None:
    out, mask_out = tmp_path / "x.png", tmp_path / "m.png"
    result = run("--report", "Large right pleural effusion. Heart size is normal.", "--out", str(out),
                 "--mask-out", str(mask_out))
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out))
    mask = np.asarray(Image.open(mask_out))
    assert image.shape == (256, 256) and image.dtype == np.uint8 and Image.open(out).mode == "L"
    assert set(np.unique(mask)) == {0, 255}
    rows, cols = np.nonzero(mask)
    assert (cols < 128).mean() > 0.95, "the patient's right lung is on the image left"
    assert rows.mean() > 128 and rows.min() > 70, "dependent fluid lies low"
    assert "effusion" in result.output and "right" in result.output


def test_json_output_and_float_copy(tmp_path: Path) -> None:
    out, npy = tmp_path / "x.png", tmp_path / "x.npy"
    result = run("--report", "Small left apical pneumothorax.", "--seed", "3", "--size", "512", "--out", str(out),
                 "--float-out", str(npy), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["seed"] == 3 and data["size"] == 512 and not data["normal"]
    assert data["drawn"][0]["kind"] == "pneumothorax" and data["drawn"][0]["side"] == "left"
    assert data["drawn"][0]["mask_pixels"] > 0
    image = np.load(npy)
    assert image.dtype == np.float32 and image.shape == (512, 512)
    assert np.array_equal(np.asarray(Image.open(out)), to_uint8(image))  # the toolkit's one 8-bit quantiser


def test_report_without_findings_renders_a_normal_chest_and_says_so(tmp_path: Path) -> None:
    result = run("--report", "Routine preoperative film.", "--out", str(tmp_path / "x.png"),
                 "--mask-out", str(tmp_path / "m.png"))
    assert result.exit_code == 0, result.output
    assert "normal chest" in result.output.lower() and "no finding was recognised" in result.output
    assert not np.asarray(Image.open(tmp_path / "m.png")).any()


def test_report_file_is_read(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text("Moderate cardiomegaly.", encoding="utf-8")
    result = run("--report-file", str(report), "--out", str(tmp_path / "x.png"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["drawn"][0]["kind"] == "cardiomegaly"


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_report_is_one_clear_error(tmp_path: Path, text: str) -> None:
    result = run("--report", text, "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2
    assert "empty" in _one_error_line(result)
    assert not (tmp_path / "x.png").exists()


def test_non_utf8_report_file_is_one_clear_error(tmp_path: Path) -> None:
    report = tmp_path / "latin1.txt"
    report.write_bytes("Pleural effusion \xe0 droite.".encode("latin-1"))
    result = run("--report-file", str(report), "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "UTF-8" in line and "latin1.txt" in line


def test_missing_report_file_and_missing_out(tmp_path: Path) -> None:
    result = run("--report-file", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "not found" in _one_error_line(result)
    result = run("--report", "Normal.")
    assert result.exit_code == 2 and "--out" in _one_error_line(result)


def test_bad_size_is_one_clear_error(tmp_path: Path) -> None:
    result = run("--report", "Normal.", "--size", "300", "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "256" in _one_error_line(result)


def _reports_file(tmp_path: Path) -> Path:
    path = tmp_path / "reports.jsonl"
    rows = [
        {"id": "a", "text": "Small right pleural effusion."},
        {"id": "b", "text": "The lungs are clear. No acute disease."},
        {"id": "c", "text": "Left upper lobe mass."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_dataset_command_builds_and_resumes(tmp_path: Path) -> None:
    source = _reports_file(tmp_path)
    out = tmp_path / "ds"
    result = run("dataset", "--reports", str(source), "--n", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = (out / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 3
    record = json.loads(lines[0])
    assert {"id", "report_id", "caption", "findings", "drawn", "seed", "image", "mask"} <= record.keys()
    assert (out / record["image"]).is_file() and (out / record["mask"]).is_file()
    again = run("dataset", "--reports", str(source), "--n", "3", "--out", str(out), "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["rendered"] == 0 and summary["skipped"] == 3


def test_dataset_unknown_name_is_one_clear_error(tmp_path: Path) -> None:
    result = run("dataset", "--reports", "chexpert-made-up", "--n", "2", "--out", str(tmp_path / "ds"))
    assert result.exit_code == 3
    assert "open-i" in _one_error_line(result)


def test_dataset_corrupt_archive_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "NLMCXR_reports.tgz"
    archive.write_bytes(b"\x1f\x8b\x08 truncated gzip, not an archive" * 3)
    monkeypatch.setattr(openi, "locate_archive", lambda: archive)
    result = run("dataset", "--reports", "open-i", "--n", "2", "--out", str(tmp_path / "ds"))
    assert result.exit_code == 3
    assert "corrupt" in _one_error_line(result)


def test_dataset_non_utf8_reports_file_is_one_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "reports.txt"
    source.write_bytes("Épanchement pleural droit.".encode("latin-1"))
    result = run("dataset", "--reports", str(source), "--n", "2", "--out", str(tmp_path / "ds"))
    assert result.exit_code == 2 and "UTF-8" in _one_error_line(result)


def test_dataset_unknown_split_is_one_clear_error(tmp_path: Path) -> None:
    result = run("dataset", "--reports", str(_reports_file(tmp_path)), "--n", "2", "--out", str(tmp_path / "ds"),
                 "--split", "validation")
    assert result.exit_code == 2 and "split" in _one_error_line(result)


def test_help_lists_the_dataset_subcommand() -> None:
    result = run("--help")
    assert result.exit_code == 0 and "dataset" in result.output
