"""The Open-i archive reader: small archives made in tmp_path, error paths, and the real archive when installed."""

from __future__ import annotations

import importlib.metadata
import io
import tarfile
from pathlib import Path

import pytest

from medsign_forensics.errors import DatasetError
from medsign_forensics.reports import load_reports, openi, parse_mesh, parse_report
from medsign_forensics.reports.findings import FindingKind

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <uId id="CXR{n}"/>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">None.</AbstractText>
    <AbstractText Label="INDICATION">Cough</AbstractText>
    <AbstractText Label="FINDINGS">{findings}</AbstractText>
    <AbstractText Label="IMPRESSION">{impression}</AbstractText>
  </Abstract></Article></MedlineCitation>
  <MeSH>{mesh}</MeSH>
</eCitation>
"""


def make_archive(path: Path, reports: list[tuple[int, str, str, list[str]]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for n, findings, impression, mesh in reports:
            data = XML.format(
                n=n, findings=findings, impression=impression, mesh="".join(f"<major>{m}</major>" for m in mesh)
            ).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{n}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def small_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_archive(
        tmp_path / "NLMCXR_reports.tgz",
        [
            (10, "Small left pleural effusion.", "No pneumothorax.", ["Pleural Effusion/left/small"]),
            (2, "The lungs are clear.", "Normal chest x-XXXX.", ["normal"]),
            (3, "", "", ["No Indexing"]),
        ],
    )
    monkeypatch.setattr(openi, "locate_archive", lambda: path)
    return path


def test_reads_reports_in_id_order_and_skips_empty_ones(small_archive: Path) -> None:
    loaded = load_reports("open-i")
    assert [r.report_id for r in loaded] == ["CXR2", "CXR10"]
    assert loaded.skipped == 1
    first, second = loaded
    assert first.text == "The lungs are clear. Normal chest x-ray."
    assert second.mesh == ("Pleural Effusion/left/small",)
    assert second.findings == "Small left pleural effusion." and second.impression == "No pneumothorax."
    assert all(r.source == "open-i" for r in loaded)


def test_dataset_name_is_case_insensitive(small_archive: Path) -> None:
    assert len(load_reports("Open-I")) == 2


def test_truncated_archive(tmp_path: Path, small_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_archive.read_bytes()
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(openi, "locate_archive", lambda: truncated)
    with pytest.raises(DatasetError, match="corrupt or truncated") as info:
        load_reports("open-i")
    assert str(truncated) in str(info.value) and "--no-deps torchxrayvision" in str(info.value)


def test_garbage_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = tmp_path / "garbage.tgz"
    garbage.write_bytes(b"this is not gzip data at all" * 10)
    monkeypatch.setattr(openi, "locate_archive", lambda: garbage)
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_reports("open-i")


def test_invalid_xml_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.tgz"
    with tarfile.open(path, "w:gz") as tar:
        data = b"<eCitation><unclosed></eCitation>"
        info = tarfile.TarInfo("ecgen-radiology/1.xml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(openi, "locate_archive", lambda: path)
    with pytest.raises(DatasetError, match="1.xml in the Open-i archive is not valid XML"):
        load_reports("open-i")


def test_archive_without_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_archive(tmp_path / "empty.tgz", [])
    monkeypatch.setattr(openi, "locate_archive", lambda: path)
    with pytest.raises(DatasetError, match="holds no XML reports"):
        load_reports("open-i")


def test_torchxrayvision_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(openi.importlib.metadata, "distribution", missing)
    with pytest.raises(DatasetError, match=r"pip install --no-deps torchxrayvision"):
        load_reports("open-i")


def test_archive_missing_from_the_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Stub:
        version = "0.0"

        def locate_file(self, name: str) -> Path:
            return tmp_path / name

    monkeypatch.setattr(openi.importlib.metadata, "distribution", lambda name: Stub())
    with pytest.raises(DatasetError, match="has no torchxrayvision/data/NLMCXR_reports.tgz"):
        load_reports("open-i")


def _torchxrayvision_installed() -> bool:
    try:
        importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _torchxrayvision_installed(), reason="torchxrayvision (the Open-i archive) is not installed")
def test_real_open_i_archive() -> None:
    loaded = load_reports("open-i")
    assert len(loaded) + loaded.skipped == 3955
    assert loaded.skipped == 28
    first = loaded[0]
    assert first.report_id == "CXR1"
    assert first.mesh == ("normal",)
    assert first.text.startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert first.text.endswith("Normal chest x-ray.")
    assert not [f for f in parse_report(first.text) if f.present]
    by_id = {r.report_id: r for r in loaded}
    assert len(by_id) == len(loaded)
    cxr2 = by_id["CXR2"]
    assert "Borderline cardiomegaly" in cxr2.text
    assert FindingKind.CARDIOMEGALY in {f.kind for f in parse_mesh(cxr2.mesh)}
    assert FindingKind.CARDIOMEGALY in {f.kind for f in parse_report(cxr2.text) if f.present}
