"""scan.py and pacs.py: folder scans (inline and with worker processes), resuming, reports, the bad-input suite,
and the PACS client against a small fake server on 127.0.0.1 (the real Orthanc is in tests/integration)."""

from __future__ import annotations

import csv
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.pacs import FakePacs
from helpers.verify import CrashingSettings, save_png

from medsign_forensics.errors import ImageReadError, InputError
from medsign_forensics.evaluate.bad_inputs import write_suite
from medsign_forensics.evaluate.synthetic import World, build_extractor, build_world, sample_image
from medsign_forensics.pacs import PacsApi, PacsClient, multipart_parts, pacs_config
from medsign_forensics.scan import VerifierSettings, list_files, scan_folder, scan_pacs
from medsign_forensics.scan_reports import read_jsonl


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture
def world(tmp_path: Path, extractor_dir: Path) -> World:
    return build_world(tmp_path / "world", extractor_dir)


@pytest.fixture
def archive(tmp_path: Path, world: World) -> Path:
    """planted PNG, its study, a forged study, three unwatermarked images (one in a subfolder), two bad files."""
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    (root / "planted.png").write_bytes(world.planted_png.read_bytes())
    world.write_study(root / "study.dcm")
    forged = world.write_study(root / "forged.dcm", sample_image(44))  # genuine tags, pixels without the key
    assert forged.path.exists()
    for index, folder in enumerate((root, root, root / "sub")):
        save_png(folder / f"real{index}.png", sample_image(300 + index))
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    (root / "notes.txt").write_text("not an image")
    return root


def settings(world: World) -> VerifierSettings:
    return VerifierSettings(registry=world.registry_dir, extractor=world.extractor_dir)


def test_folder_scan_records_every_file_and_goes_on_after_bad_ones(world, archive, tmp_path):
    jsonl, out = tmp_path / "report.jsonl", tmp_path / "report.csv"
    seen = []
    summary = scan_folder(archive, settings=settings(world), jsonl=jsonl, csv_path=out, on_verdict=seen.append)
    assert summary.total == summary.scanned == 8 == len(seen)
    assert summary.counts == {"attributed": 2, "mismatch": 1, "not detected": 3, "error": 2}
    records = read_jsonl(jsonl)
    assert records[str(archive / "study.dcm")]["provenance_id"] == world.planted.provenance_id
    assert records[str(archive / "forged.dcm")]["verdict"] == "mismatch"
    errors = [r for r in records.values() if r["verdict"] == "error"]
    assert all("\n" not in r["error"] and r["error"].startswith(r["file"]) for r in errors)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and {row["verdict"] for row in rows} == {"attributed", "mismatch", "not detected", "error"}
    forged_row = next(row for row in rows if row["file"].endswith("forged.dcm"))
    assert "tags_match_watermark" in forged_row["failed_checks"]
    assert [a["file"] for a in summary.to_dict()["alarms"]] == [str(archive / "forged.dcm")]


def test_resume_skips_unchanged_files(world, archive, tmp_path):
    jsonl = tmp_path / "report.jsonl"
    scan_folder(archive, settings=settings(world), jsonl=jsonl)
    save_png(archive / "new.png", sample_image(400))
    save_png(archive / "real0.png", sample_image(401))  # changed content, size or time
    with jsonl.open("a") as handle:
        handle.write('{"file": "half a line from a crash')  # must be ignored and sealed
    summary = scan_folder(archive, settings=settings(world), jsonl=jsonl, resume=True)
    assert summary.scanned == 2 and summary.resumed == 7 and summary.total == 9
    assert len(read_jsonl(jsonl)) == 9
    with pytest.raises(InputError, match="--resume"):
        scan_folder(archive, settings=settings(world), jsonl=jsonl)
    with pytest.raises(InputError, match="--jsonl"):
        scan_folder(archive, settings=settings(world), resume=True)


def test_reports_inside_the_scanned_folder_are_not_scanned(world, archive):
    jsonl = archive / "report.jsonl"
    summary = scan_folder(archive, settings=settings(world), jsonl=jsonl, csv_path=archive / "report.csv")
    assert summary.total == 8
    assert str(jsonl) not in read_jsonl(jsonl)


def test_worker_processes_give_the_same_verdicts_and_survive_a_crash(world, archive, tmp_path):
    """Two worker processes; one file kills its worker (as a decoder crash would): it alone is an error."""
    save_png(archive / "crash.png", sample_image(603))  # sorted first: in flight with three innocent files
    crashing = CrashingSettings(registry=world.registry_dir, extractor=world.extractor_dir)
    pooled = scan_folder(archive, settings=crashing, workers=2, jsonl=tmp_path / "b.jsonl")
    assert pooled.counts == {"attributed": 2, "mismatch": 1, "not detected": 3, "error": 3}
    records = read_jsonl(tmp_path / "b.jsonl")
    assert records[str(archive / "study.dcm")]["provenance_id"] == world.planted.provenance_id
    assert "process died while reading this file" in records[str(archive / "crash.png")]["error"]


def test_listing_is_recursive_and_sorted(archive):
    files = list_files(archive)
    assert files[-2:] == [archive / "sub" / "broken.png", archive / "sub" / "real2.png"]
    assert files[:-2] == sorted(files[:-2]) and len(files) == 8
    with pytest.raises(InputError, match="no such file"):
        list_files(archive / "missing")


def test_bad_input_suite_is_reported_file_by_file(extractor_dir, tmp_path):
    suite = write_suite(tmp_path / "suite")
    assert len(suite) >= 250
    summary = scan_folder(tmp_path / "suite", settings=VerifierSettings(extractor=extractor_dir),
                          jsonl=tmp_path / "suite.jsonl")
    records = read_jsonl(tmp_path / "suite.jsonl")
    assert summary.total == len(suite) == len(records)
    for item in suite:
        record = records[str(item.path)]
        message = record["error"] or ""
        assert (record["verdict"] != "error") == item.readable, (item.path.name, record["verdict"], message)
        assert "\n" not in message and "Traceback" not in message and "internal error" not in message
        if not item.readable:
            assert message.startswith(str(item.path)), message
    categories = {item.category for item in suite}
    assert {"zero-byte", "truncated", "wrong extension", "huge or empty declared size", "DICOM without pixel data",
            "odd bit depth", "multi-frame", "random bytes", "compressed transfer syntax", "odd file name"} <= categories


# -- PACS client against a fake server ---------------------------------------------------------------------


@pytest.fixture
def fake_pacs(world, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    FakePacs.files = {"a-study": study.path.read_bytes(), "b-junk": b"not dicom at all"}
    FakePacs.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePacs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("api,suffix", [(PacsApi.REST, ""), (PacsApi.DICOMWEB, "/dicom-web")])
def test_scan_pacs_verifies_every_instance(world, fake_pacs, tmp_path, api, suffix):
    url = fake_pacs.replace("http://", "http://u:p@") + suffix
    config = pacs_config(url)
    assert config.api is api and "u:p" not in config.url
    jsonl = tmp_path / "pacs.jsonl"
    summary = scan_pacs(config, settings=settings(world), jsonl=jsonl)
    assert summary.counts == {"attributed": 1, "error": 1}
    records = list(read_jsonl(jsonl).values())
    good = next(r for r in records if r["verdict"] == "attributed")
    assert good["provenance_id"] == world.planted.provenance_id
    assert good["source"]["pacs"] == fake_pacs + suffix
    assert all("u:p" not in json.dumps(r) and "medsign-pacs-" not in json.dumps(r) for r in records)
    again = scan_pacs(config, settings=settings(world), jsonl=jsonl, resume=True)
    assert again.scanned == 0 and again.total == 2


def test_pacs_page_size_and_errors(world, fake_pacs):
    client = PacsClient(pacs_config(fake_pacs, username="u", password="p"))
    assert [ref.instance_id for ref in client.instances(page_size=1)] == ["a-study", "b-junk"]
    assert sum("/instances?" in r for r in FakePacs.requests) == 3  # two full pages and an empty one
    with pytest.raises(InputError, match="refused the credentials"):
        list(PacsClient(pacs_config(fake_pacs, username="u", password="wrong")).instances())
    with pytest.raises(ImageReadError, match="HTTP 404"):
        client.retrieve(type(next(client.instances()))(instance_id="missing", sop_instance_uid=None))
    with pytest.raises(InputError, match="redirect"):
        client._get("/redirect", accept="*/*")
    with pytest.raises(InputError, match="cannot be reached"):
        list(PacsClient(pacs_config("http://127.0.0.1:9", username="u", password="p", timeout=2)).instances())
    with pytest.raises(InputError, match="http"):
        pacs_config("ftp://127.0.0.1/")


def test_multipart_parsing():
    body = b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b1\r\n\r\nTWO\r\n--b1--\r\n"
    assert multipart_parts(body, "multipart/related; boundary=b1") == [b"ONE", b"TWO"]
    with pytest.raises(ImageReadError, match="multipart"):
        multipart_parts(b"x", "application/dicom")


def test_reports_keep_odd_file_names_and_defuse_formulas(tmp_path, world, monkeypatch):
    import os

    folder = tmp_path / "odd"
    save_png(folder / "=HYPERLINK(1).png", sample_image(40))
    save_png(folder / "-1+2.png", sample_image(41))
    raw = b"caf\xe9.png"  # Latin-1 bytes: not a valid UTF-8 file name
    with open(os.fsencode(folder) + b"/" + raw, "wb") as handle:
        handle.write((folder / "-1+2.png").read_bytes())
    monkeypatch.chdir(folder)  # `medsign scan .`: the reported names start with the file names themselves
    jsonl, out = tmp_path / "new" / "deeper" / "scan.jsonl", tmp_path / "new" / "scan.csv"  # folders do not exist
    summary = scan_folder(Path("."), settings=settings(world), jsonl=jsonl, csv_path=out)
    assert summary.total == 3 and summary.counts.get("error", 0) == 0
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        names = [row["file"] for row in csv.DictReader(handle)]
    assert sorted(names) == ["'-1+2.png", "'=HYPERLINK(1).png", "caf\udce9.png"]
    assert os.fsencode(names[2]) == raw  # the original bytes, losslessly
    assert set(read_jsonl(jsonl)) == {"=HYPERLINK(1).png", "-1+2.png", "caf\udce9.png"}


def test_unwritable_report_is_refused_before_the_scan(tmp_path, world, archive):
    import os

    with pytest.raises(InputError, match="is a folder"):
        scan_folder(archive, settings=settings(world), csv_path=tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(InputError, match="cannot be written"):
            scan_folder(archive, settings=settings(world), csv_path=locked / "scan.csv")
    finally:
        locked.chmod(0o700)


class DuplicatePacs(FakePacs):
    """A DICOMweb server that stored two objects under the same study, series and SOP Instance UIDs."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        names = sorted(self.files)
        if self.path.startswith("/dicom-web/instances?"):
            page = [{"00080018": {"vr": "UI", "Value": ["1.2.9"]}, "0020000D": {"vr": "UI", "Value": ["1.2"]},
                     "0020000E": {"vr": "UI", "Value": ["1.2.3"]}} for _ in names]
            return self._reply(200, json.dumps(page).encode(), "application/dicom+json")
        if self.path == "/dicom-web/studies/1.2/series/1.2.3/instances/1.2.9":
            body = b"".join(b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n" + self.files[name] + b"\r\n"
                            for name in names) + b"--XYZ--\r\n"
            return self._reply(200, body, 'multipart/related; type="application/dicom"; boundary=XYZ')
        return self._reply(404, b"", "text/plain")


def test_objects_sharing_a_sop_instance_uid_get_a_row_each(world, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    DuplicatePacs.files = {"a-study": study.path.read_bytes(), "b-plain": (world.planted_png).read_bytes()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), DuplicatePacs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        summary = scan_pacs(pacs_config(url, username="u", password="p", api=PacsApi.DICOMWEB),
                            settings=settings(world), jsonl=tmp_path / "dup.jsonl", csv_path=tmp_path / "dup.csv")
    finally:
        server.shutdown()
        server.server_close()
    records = read_jsonl(tmp_path / "dup.jsonl")
    assert summary.total == 2 and sorted(key.rsplit("#", 1)[1] for key in records) == ["1", "2"]
    first, second = (records[key] for key in sorted(records))
    assert first["verdict"] == "attributed" and first["format"] == "dicom"
    assert first["sop_instance_uid"] == study.sop_instance_uid
    assert second["format"] == "png" and second["verdict"] == "attributed"  # the second object: the planted PNG
    for record in (first, second):
        assert any("duplicate SOP Instance UID" in note for note in record["notes"]), record["notes"]
