from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from helpers.dicom import MODEL, Deployment

from medsign_forensics.dicom import PRIVATE_CREATOR, Modality, write_synthetic_study
from medsign_forensics.dicom.pixels import pixel_sha256
from medsign_forensics.errors import InputError
from medsign_forensics.provenance import SignedDocument


def test_secondary_capture_labelled_synthetic(tmp_path: Path, deployment: Deployment, image8: np.ndarray) -> None:
    written = deployment.write(tmp_path / "study.dcm", image8, seed=42)
    ds = pydicom.dcmread(written.path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == written.sop_instance_uid
    assert ds.ConversionType == "SYN" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds[0x0008, 0x001C].value == "YES"
    assert ds.BurnedInAnnotation == "NO" and ds.BodyPartExamined == "CHEST" and ds.Modality == "OT"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8 and ds.BitsStored == 8
    assert str(ds.PatientName) == "SYNTHETIC^IMAGE" and ds.PatientID.startswith("SYN-")
    (equipment,) = ds.ContributingEquipmentSequence
    (purpose,) = equipment.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109100", "DCM", "Synthesizing Equipment")
    assert equipment.ManufacturerModelName == MODEL.name and equipment.SoftwareVersions == MODEL.version
    assert equipment.Manufacturer == "Test Imaging AI"
    np.testing.assert_array_equal(ds.pixel_array, image8)
    assert written.pixel_sha256 == pixel_sha256(image8)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sixteen_bit_and_dx_modality(tmp_path: Path, deployment: Deployment, image16: np.ndarray) -> None:
    written = deployment.write(tmp_path / "study16.dcm", image16, modality=Modality.DX)
    ds = pydicom.dcmread(written.path)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    assert ds.Modality == "DX"
    np.testing.assert_array_equal(ds.pixel_array, image16)


def test_uids_are_fresh_even_with_the_same_seed(tmp_path: Path, deployment: Deployment,
                                                image8: np.ndarray) -> None:
    first = deployment.write(tmp_path / "a.dcm", image8, seed=7)
    second = deployment.write(tmp_path / "b.dcm", image8, seed=7)
    for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        assert getattr(first, name) != getattr(second, name)
        assert getattr(first, name).startswith("2.25.")


def test_private_block_holds_the_signed_documents(tmp_path: Path, deployment: Deployment,
                                                  image8: np.ndarray) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    written = deployment.write(tmp_path / "study.dcm", image8, seed=9, created_at=when)
    ds = pydicom.dcmread(written.path)
    block = ds.private_block(0x0071, PRIVATE_CREATOR)
    assert block[0x01].value == deployment.entry.provenance_id
    assert block[0x02].value == deployment.issuer.key_id
    assert block[0x03].value.encode() == deployment.entry.signed_record.payload
    assert bytes(block[0x04].value) == deployment.entry.signed_record.signature
    assert block[0x05].value.encode() == written.statement.payload
    assert '"seed":9' in block[0x05].value and '"created_at":"2025-03-04T05:06:07Z"' in block[0x05].value
    assert ds.ContentDate == "20250304" and ds.ContentTime == "050607"
    assert block[0x06].value[:8] == written.statement.signature[:8]


def test_model_must_match_the_record(tmp_path: Path, deployment: Deployment, image8: np.ndarray) -> None:
    with pytest.raises(InputError, match="vouches for model mini-cxr"):
        write_synthetic_study(tmp_path / "y.dcm", image=image8, report_text="x", model_name=MODEL.name,
                              model_version=MODEL.version, weights_sha256="00" * 32,
                              provenance=deployment.entry.signed_record, signer=deployment.issuer)
    assert not (tmp_path / "y.dcm").exists()


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((8, 8), np.float32), "must be uint8 or uint16"),
    (np.zeros((8, 8, 3), np.uint8), "one greyscale frame"),
])
def test_bad_images_are_refused(tmp_path: Path, deployment: Deployment, image: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        deployment.write(tmp_path / "bad.dcm", image)


def test_empty_report_and_broken_record_are_refused(tmp_path: Path, deployment: Deployment,
                                                    image8: np.ndarray) -> None:
    with pytest.raises(InputError, match="report text is empty"):
        deployment.write(tmp_path / "bad.dcm", image8, report="   \n")
    deployment.entry = dataclasses.replace(deployment.entry, signed_record=SignedDocument(
        deployment.entry.signed_record.payload, b"short"))
    with pytest.raises(InputError, match="signature has 5 bytes"):
        deployment.write(tmp_path / "bad.dcm", image8)
