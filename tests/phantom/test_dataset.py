"""Phantom datasets: layout, determinism per item, resuming, and refusing to mix settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsign_forensics.errors import InputError
from medsign_forensics.phantom.dataset import build_dataset, item_seed, plan_items
from medsign_forensics.reports.corpus import Report

REPORTS = [
    Report("r1", "Moderate right pleural effusion.", ""),
    Report("r2", "The lungs are clear.", "No acute cardiopulmonary disease."),
    Report("r3", "Left upper lobe nodule.", "Mild cardiomegaly."),
    Report("r4", "", "No pneumothorax. Bilateral lower lobe consolidation."),
]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_plan_is_fixed_by_seed_and_index() -> None:
    short = plan_items(REPORTS, n=3, seed=7)
    long = plan_items(REPORTS, n=9, seed=7)
    assert short == long[:3]
    assert [item.seed for item in long] == [item_seed(7, i) for i in range(9)]
    assert {item.report_id for item in long[:4]} == {"r1", "r2", "r3", "r4"}, "a permutation before cycling"
    assert plan_items(REPORTS, n=3, seed=8) != short


def test_plan_rejects_nothing_to_render() -> None:
    with pytest.raises(InputError):
        plan_items([Report("x", "XXXX", "")], n=1, seed=0)
    with pytest.raises(InputError):
        plan_items(REPORTS, n=0, seed=0)


def test_build_writes_images_masks_and_captions(tmp_path: Path) -> None:
    seen = []
    summary = build_dataset(REPORTS, tmp_path, n=4, seed=1, progress=lambda done, total: seen.append((done, total)))
    assert summary.total == 4 and summary.rendered == 4 and summary.skipped == 0
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    records = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["000000", "000001", "000002", "000003"]
    for record in records:
        image = np.asarray(Image.open(tmp_path / record["image"]))
        union = np.asarray(Image.open(tmp_path / record["mask"])) > 0
        per_finding = np.load(tmp_path / record["finding_masks"])["masks"]
        assert image.shape == (256, 256) and image.dtype == np.uint8
        assert per_finding.shape == (len(record["drawn"]), 256, 256)
        assert np.array_equal(per_finding.any(axis=0), union)
        assert record["caption"] == next(r.text for r in REPORTS if r.report_id == record["report_id"])
    assert summary.normal == sum(not r["drawn"] for r in records)
    settings = json.loads((tmp_path / "dataset.json").read_text())
    assert settings["seed"] == 1 and settings["size"] == 256


def test_resume_redoes_only_incomplete_items_and_gives_the_same_files(tmp_path: Path) -> None:
    build_dataset(REPORTS, tmp_path, n=3, seed=2)
    before = files(tmp_path)
    # An interrupted item: its record was never written, and a temporary file was left behind.
    (tmp_path / "meta" / "000001.json").unlink()
    (tmp_path / "images" / "000001.png").write_bytes(b"half a png")
    (tmp_path / "images" / ".000002.png.abc.tmp").write_bytes(b"junk")
    summary = build_dataset(REPORTS, tmp_path, n=3, seed=2)
    assert summary.rendered == 1 and summary.skipped == 2
    assert files(tmp_path) == before


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    build_dataset(REPORTS, tmp_path, n=1, seed=3)
    with pytest.raises(InputError, match="other settings"):
        build_dataset(REPORTS, tmp_path, n=1, seed=4)


def test_parallel_build_equals_serial_build(tmp_path: Path) -> None:
    build_dataset(REPORTS, tmp_path / "serial", n=4, seed=5, workers=1)
    build_dataset(REPORTS, tmp_path / "parallel", n=4, seed=5, workers=2)
    assert files(tmp_path / "serial") == files(tmp_path / "parallel")
