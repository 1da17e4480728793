from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from helpers.dicom import Deployment

from medsign_forensics.dicom import PRIVATE_CREATOR, CheckName, CheckStatus, check_study, read_provenance_block
from medsign_forensics.dicom.uids import new_uid
from medsign_forensics.errors import DicomError
from medsign_forensics.provenance.policy import TamperEvent

P, F, S = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIPPED


def _statuses(result) -> dict[str, CheckStatus]:
    return {check.name.value: check.status for check in result.checks}


def _failed(result) -> set[str]:
    return {check.name.value for check in result.failed}


@pytest.fixture
def study(tmp_path: Path, deployment: Deployment, image8: np.ndarray) -> Path:
    return deployment.write(tmp_path / "study.dcm", image8, seed=1).path


def _edit(path: Path, edit) -> Path:
    ds = pydicom.dcmread(path)
    edit(ds)
    out = path.with_name("edited.dcm")
    ds.save_as(out, enforce_file_format=True)
    return out


def _block(ds):
    return ds.private_block(0x0071, PRIVATE_CREATOR)


def test_untouched_study_passes_every_check(study: Path, deployment: Deployment) -> None:
    result = check_study(study, deployment.public_keys)
    assert result.ok and set(_statuses(result).values()) == {P}
    assert result.record.provenance_id == deployment.entry.provenance_id
    assert result.statement.seed == 1 and result.statement.sop_instance_uid == result.sop_instance_uid
    assert {c["name"] for c in result.to_dict()["checks"]} == {name.value for name in CheckName}


def test_edited_pixels_fail_only_the_pixel_hash(study: Path, deployment: Deployment) -> None:
    def edit(ds):
        pixels = bytearray(ds.PixelData)
        pixels[100] ^= 0x10
        ds.PixelData = bytes(pixels)

    result = check_study(_edit(study, edit), deployment.public_keys)
    assert _failed(result) == {"pixel_hash"}
    assert result.check(CheckName.PIXEL_HASH).event is TamperEvent.PIXEL_HASH_MISMATCH
    assert result.record is not None  # the signatures still hold: the watermark can still attribute


def test_flipped_statement_signature_byte(study: Path, deployment: Deployment) -> None:
    def edit(ds):
        signature = bytearray(_block(ds)[0x06].value)
        signature[0] ^= 0x01
        _block(ds)[0x06].value = bytes(signature)

    result = check_study(_edit(study, edit), deployment.public_keys)
    statuses = _statuses(result)
    assert statuses["statement_signature"] is F and statuses["record_signature"] is P
    assert statuses["pixel_hash"] is S and statuses["sop_instance_uid"] is S
    assert "bad-signature" in result.check(CheckName.STATEMENT_SIGNATURE).detail
    assert result.check(CheckName.STATEMENT_SIGNATURE).event is TamperEvent.SIGNATURE_INVALID


def test_flipped_record_signature_byte(study: Path, deployment: Deployment) -> None:
    def edit(ds):
        signature = bytearray(_block(ds)[0x04].value)
        signature[-1] ^= 0x80
        _block(ds)[0x04].value = bytes(signature)

    result = check_study(_edit(study, edit), deployment.public_keys)
    assert _failed(result) == {"record_signature"}
    assert result.record is None and result.statement is not None


def test_edited_provenance_tag_and_sop_uid_and_report(study: Path, deployment: Deployment) -> None:
    def edit(ds):
        _block(ds)[0x01].value = "msp-aaaaaaaaaaaaaaaa"
        ds.SOPInstanceUID = new_uid()
        _block(ds)[0x07].value = "Left lower lobe consolidation."

    result = check_study(_edit(study, edit), deployment.public_keys)
    assert _failed(result) == {"tags_match_record", "sop_instance_uid", "report_hash"}
    assert result.check(CheckName.SOP_INSTANCE_UID).event is TamperEvent.STATEMENT_MISMATCH
    assert result.check(CheckName.REPORT_HASH).event is TamperEvent.REPORT_HASH_MISMATCH


def test_block_copied_onto_another_image(tmp_path: Path, study: Path, deployment: Deployment,
                                         image16: np.ndarray) -> None:
    other = pydicom.dcmread(deployment.write(tmp_path / "other.dcm", image16).path)
    source = pydicom.dcmread(study)
    for element in source.group_dataset(0x0071):
        other.add(element)  # the copied block replaces the other study's own block
    other.save_as(tmp_path / "forged.dcm", enforce_file_format=True)
    result = check_study(tmp_path / "forged.dcm", deployment.public_keys)
    assert {"pixel_hash", "sop_instance_uid"} <= _failed(result)
    assert result.check(CheckName.RECORD_SIGNATURE).status is P


def test_unknown_issuer(study: Path) -> None:
    result = check_study(study, {})
    assert _failed(result) == set() and not result.ok
    assert {c.name.value for c in result.unverifiable} == {"record_signature", "statement_signature"}
    assert "unknown issuer" in result.check(CheckName.RECORD_SIGNATURE).detail


def test_no_block_and_incomplete_block(study: Path, deployment: Deployment) -> None:
    def strip(ds):
        for element in list(ds.group_dataset(0x0071)):
            del ds[element.tag]

    result = check_study(_edit(study, strip), deployment.public_keys)
    assert not result.has_provenance and not result.ok
    assert result.check(CheckName.PROVENANCE_BLOCK).status is S
    assert result.check(CheckName.SYNTHETIC_LABELS).status is P

    def incomplete(ds):
        del ds[_block(ds).get_tag(0x05)]

    result = check_study(_edit(study, incomplete), deployment.public_keys)
    check = result.check(CheckName.PROVENANCE_BLOCK)
    assert check.status is F and "lacks its statement element" in check.detail
    with pytest.raises(DicomError, match="lacks its statement"):
        read_provenance_block(pydicom.dcmread(study.with_name("edited.dcm")))


def test_block_is_found_by_creator_string_in_any_slot(study: Path, deployment: Deployment) -> None:
    def move(ds):
        old = _block(ds)
        values = {offset: ds[old.get_tag(offset)] for offset in range(1, 8)}
        for element in list(ds.group_dataset(0x0071)):
            del ds[element.tag]
        ds.private_block(0x0073, "SOMEONE ELSE", create=True).add_new(0x01, "LO", "unrelated")
        moved = ds.private_block(0x0073, PRIVATE_CREATOR, create=True)
        assert moved.block_start == 0x1100
        for offset, element in values.items():
            moved.add_new(offset, element.VR, element.value)

    result = check_study(_edit(study, move), deployment.public_keys)
    assert result.ok and result.block.group == 0x0073


def test_implicit_vr_round_trip_keeps_everything_checkable(study: Path, deployment: Deployment) -> None:
    def implicit(ds):
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    edited = _edit(study, implicit)
    block = pydicom.dcmread(edited).private_block(0x0071, PRIVATE_CREATOR)
    assert block[0x03].VR == "UN"  # what a PACS hands back after an implicit-VR hop
    assert check_study(edited, deployment.public_keys).ok


def test_lossless_recompression_keeps_the_pixel_digest(study: Path, deployment: Deployment) -> None:
    edited = _edit(study, lambda ds: ds.compress(RLELossless, generate_instance_uid=False))
    assert pydicom.dcmread(edited).file_meta.TransferSyntaxUID == RLELossless
    assert check_study(edited, deployment.public_keys).ok


def test_dataset_input_and_synthetic_label_removal(study: Path, deployment: Deployment) -> None:
    ds = pydicom.dcmread(study)
    del ds[0x0008, 0x001C]
    result = check_study(ds, deployment.public_keys)
    assert result.path is None
    assert _failed(result) == {"synthetic_labels"}
    assert result.check(CheckName.SYNTHETIC_LABELS).event is None


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"not a dicom file at all" * 20])
def test_unreadable_files_are_dicom_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomError) as caught:
        check_study(path, {})
    assert str(path) in str(caught.value) and caught.value.exit_code == 6


def test_missing_file_is_a_dicom_error(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match="file not found"):
        check_study(tmp_path / "absent.dcm", {})


def test_truncated_pixel_data_fails_the_pixel_check(study: Path, deployment: Deployment) -> None:
    data = study.read_bytes()
    truncated = study.with_name("truncated.dcm")
    truncated.write_bytes(data[:-500])
    result = check_study(truncated, deployment.public_keys)
    assert result.check(CheckName.PIXEL_HASH).status is F
