"""`medsign scan` end to end: summary, reports, resume, exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.verify import save_png

from medsign_forensics.cli.main import app
from medsign_forensics.evaluate.synthetic import World, build_extractor, build_world, sample_image

runner = CliRunner()
ENV = {"COLUMNS": "160"}


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture
def world(tmp_path, extractor_dir) -> World:
    return build_world(tmp_path / "world", extractor_dir)


@pytest.fixture
def folder(tmp_path, world) -> Path:
    root = tmp_path / "scan"
    root.mkdir()
    (root / "planted.png").write_bytes(world.planted_png.read_bytes())
    for index in range(2):
        save_png(root / "deeper" / f"real{index}.png", sample_image(700 + index))
    return root


def invoke(world: World, *args: str):
    return runner.invoke(app, ["scan", *args, "--workers", "1", "--registry", str(world.registry_dir),
                               "--extractor", str(world.extractor_dir)], env=ENV)


def test_scan_writes_reports_and_summary(world, folder, tmp_path):
    out, jsonl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    result = invoke(world, str(folder), "--out", str(out), "--jsonl", str(jsonl))
    assert result.exit_code == 0, result.output
    assert "attributed" in result.output and "not detected" in result.output and "3 file(s) verified" in result.output
    rows = list(csv.DictReader(out.open()))
    assert sorted(row["verdict"] for row in rows) == ["attributed", "not detected", "not detected"]
    assert len(jsonl.read_text().splitlines()) == 3


def test_json_summary_resume_and_exit_2_for_unreadable(world, folder, tmp_path):
    jsonl = tmp_path / "r.jsonl"
    assert invoke(world, str(folder), "--jsonl", str(jsonl)).exit_code == 0
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x01" * 30)
    result = invoke(world, str(folder), "--jsonl", str(jsonl), "--resume", "--json")
    assert result.exit_code == 2, result.output
    summary = json.loads(result.stdout)
    assert summary["scanned"] == 1 and summary["resumed"] == 3 and summary["total"] == 4
    assert summary["counts"]["error"] == 1 and summary["errors"][0]["file"] == str(folder / "broken.tif")
    again = invoke(world, str(folder), "--jsonl", str(jsonl))
    assert again.exit_code == 2 and "--resume" in again.output


def test_alarm_gives_exit_1_and_is_listed(world, folder, tmp_path):
    world.write_study(folder / "forged.dcm", sample_image(71))
    result = invoke(world, str(folder))
    assert result.exit_code == 1
    assert "Alarms (1)" in result.output and "forged.dcm" in result.output


def test_usage_errors(world, folder):
    assert invoke(world).exit_code == 2
    both = invoke(world, str(folder), "--pacs", "http://127.0.0.1:1")
    assert both.exit_code == 2 and "not both" in both.output
    missing = invoke(world, str(folder / "nope"))
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    unreachable = invoke(world, "--pacs", "http://127.0.0.1:9")
    assert unreachable.exit_code == 2 and "cannot be reached" in unreachable.output
