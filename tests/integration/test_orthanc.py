"""A real PACS: Orthanc (Debian packages orthanc and orthanc-dicomweb) started by the test on loopback.

Generated studies are pushed by C-STORE (pynetdicom, Explicit VR Little Endian only, fresh UIDs per study) and
then scanned through both Orthanc's REST API and its DICOMweb plugin; the private provenance block must come
back intact (found, explicit VRs, signatures and pixel digest still valid). Skipped when Orthanc or its
DICOMweb plugin is absent. Traffic goes to 127.0.0.1 only; Orthanc is stopped by its PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medsign_forensics.cli.main import app
from medsign_forensics.dicom import check_study
from medsign_forensics.dicom.private import VR, Element, find_block
from medsign_forensics.evaluate.synthetic import build_extractor, build_world, sample_image
from medsign_forensics.pacs import PacsClient, pacs_config
from medsign_forensics.scan import VerifierSettings, scan_pacs
from medsign_forensics.scan_reports import read_jsonl

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "medsign", "integration-test-only"
AET = "MEDSIGNTEST"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
                       reason="Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc "
                              "orthanc-dicomweb)"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> bytes:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A fresh Orthanc with authentication and DICOMweb; yields (http base URL, DICOM port)."""
    folder = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "medsign-integration",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,  # HTTP from loopback only (Orthanc 1.10 has no bind-address option)
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "SaveJobs": False,
        "StorageCompression": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (closed in the finaliser)
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                               start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited with {process.returncode}: "
                            f"{(folder / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                _get(base + "/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail("Orthanc did not answer within 60 s")
                time.sleep(0.3)
        yield base, dicom_port
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture(scope="module")
def pushed(orthanc, extractor_dir, tmp_path_factory):
    """A world whose planted study, a forged study and an unwatermarked study were stored by C-STORE."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    from medsign_forensics.dicom import SECONDARY_CAPTURE_IMAGE_STORAGE

    folder = tmp_path_factory.mktemp("world")
    world = build_world(folder, extractor_dir)
    studies = {
        "planted": world.write_study(folder / "planted.dcm"),
        "forged": world.write_study(folder / "forged.dcm", sample_image(801)),
    }
    _, dicom_port = orthanc
    ae = AE(ae_title="MEDSIGNPUSH")
    ae.add_requested_context(SECONDARY_CAPTURE_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", dicom_port, ae_title=AET)
    assert association.is_established, "Orthanc refused the association"
    try:
        for study in studies.values():
            status = association.send_c_store(pydicom.dcmread(study.path))
            assert status and status.Status == 0x0000, status
    finally:
        association.release()
    return world, studies


def _by_uid(path: Path) -> dict[str, dict]:
    return {r["source"]["sop_instance_uid"]: r for r in read_jsonl(path).values()}


@pytest.mark.parametrize("suffix", ["", "/dicom-web"])
def test_scan_pacs_gives_the_verdicts_and_uids(orthanc, pushed, tmp_path, suffix):
    base, _ = orthanc
    world, studies = pushed
    config = pacs_config(base.replace("http://", f"http://{USER}:{PASSWORD}@") + suffix)
    jsonl = tmp_path / "pacs.jsonl"
    summary = scan_pacs(config, settings=VerifierSettings(registry=world.registry_dir, extractor=world.extractor_dir),
                        jsonl=jsonl)
    records = _by_uid(jsonl)
    assert summary.total == 2
    planted = records[studies["planted"].sop_instance_uid]
    assert planted["verdict"] == "attributed" and planted["provenance_id"] == world.planted.provenance_id
    assert planted["sop_instance_uid"] == studies["planted"].sop_instance_uid
    assert all(c["status"] != "fail" for c in planted["checks"])
    assert records[studies["forged"].sop_instance_uid]["verdict"] == "mismatch"
    assert PASSWORD not in jsonl.read_text()


def test_private_block_survives_the_round_trip(orthanc, pushed):
    base, _ = orthanc
    world, studies = pushed
    client = PacsClient(pacs_config(base, username=USER, password=PASSWORD))
    refs = {ref.sop_instance_uid: ref for ref in client.instances()}
    data = client.retrieve(refs[studies["planted"].sop_instance_uid])
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    block = find_block(dataset)
    assert block is not None
    for element in Element:
        assert block[element].VR == VR[element], (element, block[element].VR)
    assert block[Element.PROVENANCE_ID].value == world.planted.provenance_id
    report = check_study(dataset, world.open_registry().public_keys())
    assert report.ok, [c.to_dict() for c in report.failed]


def test_cli_scan_of_the_pacs(orthanc, pushed, tmp_path):
    base, _ = orthanc
    world, _ = pushed
    result = CliRunner().invoke(app, ["scan", "--pacs", base + "/dicom-web", "--pacs-user", USER, "--json",
                                      "--registry", str(world.registry_dir), "--extractor", str(world.extractor_dir),
                                      "--out", str(tmp_path / "pacs.csv"), "--workers", "2"],
                                env={"MEDSIGN_PACS_PASSWORD": PASSWORD})
    assert result.exit_code == 1, result.output  # the forged study is an alarm
    summary = json.loads(result.stdout)
    assert summary["counts"]["attributed"] == 1 and summary["counts"]["mismatch"] == 1
    denied = CliRunner().invoke(app, ["scan", "--pacs", base, "--pacs-user", USER, "--registry",
                                      str(world.registry_dir), "--extractor", str(world.extractor_dir)],
                                env={"MEDSIGN_PACS_PASSWORD": "wrong"})
    assert denied.exit_code == 2 and "refused the credentials" in denied.output
