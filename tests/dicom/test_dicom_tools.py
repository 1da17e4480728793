"""Generated studies against real DICOM tools: dicom3tools' dciodvfy and dcmtk (skipped when absent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from helpers.dicom import Deployment

from medsign_forensics.dicom import Modality, check_study

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install dicom3tools dcmtk)")
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("bits", [8, 16])
def test_dciodvfy_reports_no_error_except_the_unknown_synthetic_data_tag(
        tmp_path: Path, deployment: Deployment, image8: np.ndarray, image16: np.ndarray, bits: int) -> None:
    dciodvfy = _tool("dciodvfy")
    image, modality = (image8, Modality.OT) if bits == 8 else (image16, Modality.DX)
    path = deployment.write(tmp_path / "study.dcm", image, modality=modality).path
    result = _run(dciodvfy, str(path))
    lines = (result.stdout + result.stderr).splitlines()
    assert any(line.strip() == "SCImage" for line in lines), lines  # it recognised the IOD
    errors = [line for line in lines if line.startswith("Error - ")]
    unexpected = [line for line in errors if "(0x0008,0x001c)" not in line.lower()]
    assert unexpected == [], "\n".join(lines)


def test_dcmdump_reads_the_study_and_its_private_block(tmp_path: Path, deployment: Deployment,
                                                       image8: np.ndarray) -> None:
    dcmdump = _tool("dcmdump")
    path = deployment.write(tmp_path / "study.dcm", image8).path
    result = _run(dcmdump, str(path))
    assert result.returncode == 0, result.stderr
    assert "SecondaryCaptureImageStorage" in result.stdout
    assert "[MEDSIGN_FORENSICS 1]" in result.stdout
    assert deployment.entry.provenance_id in result.stdout
    assert "[Synthesizing Equipment]" in result.stdout and "ConversionType" in result.stdout


@pytest.mark.parametrize(("bits", "option"), [(8, "+on"), (16, "+on2")])
def test_dcm2pnm_renders_exactly_the_stored_pixels(tmp_path: Path, deployment: Deployment, image8: np.ndarray,
                                                   image16: np.ndarray, bits: int, option: str) -> None:
    dcm2pnm = _tool("dcm2pnm")
    image = image8 if bits == 8 else image16
    path = deployment.write(tmp_path / "study.dcm", image).path
    png = tmp_path / "out.png"
    result = _run(dcm2pnm, option, str(path), str(png))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.array(Image.open(png)), image)


@pytest.mark.parametrize("command", [["dcmconv", "+ti"], ["dcmcrle"]])
def test_dcmtk_lossless_reencoding_keeps_every_check(tmp_path: Path, deployment: Deployment,
                                                     image16: np.ndarray, command: list[str]) -> None:
    tool = _tool(command[0])
    path = deployment.write(tmp_path / "study.dcm", image16).path
    out = tmp_path / "reencoded.dcm"
    result = _run(tool, *command[1:], str(path), str(out))
    assert result.returncode == 0, result.stderr
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID != pydicom.dcmread(path).file_meta.TransferSyntaxUID
    checked = check_study(out, deployment.public_keys)
    assert checked.ok, [check.to_dict() for check in checked.failed]
