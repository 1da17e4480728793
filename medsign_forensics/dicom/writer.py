"""Write a generated image as a DICOM Secondary Capture object that says it is synthetic and proves where it
came from.

The object is a Secondary Capture Image (1.2.840.10008.5.1.4.1.1.7), Explicit VR Little Endian, MONOCHROME2,
8 or 16 bits. It is labelled synthetic three ways that readers of different ages understand: Conversion Type
SYN, Synthetic Data (0008,001C) YES, and a Contributing Equipment item whose purpose is (109100, DCM,
"Synthesizing Equipment") naming the model. Modality is OT by default: a Secondary Capture of a generated
image was acquired by no modality, and the Digital X-Ray IOD demands acquisition facts a generator cannot
honestly supply. The patient is a placeholder (``SYNTHETIC^IMAGE``, random ``SYN-`` ID, no birth date or sex).
Provenance goes in the MedSign private block (:mod:`medsign_forensics.dicom.private`): the issuer-signed record
and a per-image statement, signed by ``signer``, binding the SOP Instance UID, the pixel and report digests
(:mod:`medsign_forensics.dicom.pixels`), the weights digest and the record.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from medsign_forensics import __version__
from medsign_forensics.dicom.pixels import normalise_report, pixel_sha256, report_sha256
from medsign_forensics.dicom.private import PRIVATE_CREATOR, PRIVATE_GROUP, VR, Element
from medsign_forensics.dicom.uids import SECONDARY_CAPTURE_IMAGE_STORAGE, new_uid
from medsign_forensics.errors import DicomError, InputError
from medsign_forensics.fileio import write_atomic
from medsign_forensics.provenance.canonical import parse_canonical
from medsign_forensics.provenance.keys import Signer
from medsign_forensics.provenance.records import (
    SIGNATURE_BYTES,
    ImageStatement,
    ProvenanceRecord,
    SignedDocument,
    sign,
)

SOFTWARE_NAME = "medsign-forensics"


class Modality(str, Enum):
    """Modality written in the General Series module."""

    OT = "OT"  # "other": the honest default for a generated Secondary Capture
    DX = "DX"  # for archives that route chest images by modality


@dataclass(frozen=True)
class WrittenStudy:
    """What was written: where, under which UIDs, and the signed statement it carries."""

    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    pixel_sha256: str
    statement: SignedDocument


def write_synthetic_study(
    path: str | Path,
    *,
    image: np.ndarray,
    report_text: str,
    model_name: str,
    model_version: str,
    weights_sha256: str,
    provenance: SignedDocument,
    signer: Signer,
    seed: int | None = None,
    modality: Modality = Modality.OT,
    created_at: datetime | None = None,
) -> WrittenStudy:
    """Write ``image`` (uint8 or uint16, shape (rows, columns)) as a synthetic study with signed provenance.

    ``provenance`` is the deployment's signed record from the registry; the model arguments must agree with
    it (a record vouches for specific weights). ``signer`` signs the per-image statement: an
    :class:`~medsign_forensics.provenance.keys.IssuerKey` or any object with ``key_id`` and ``sign(bytes)``.
    ``seed`` is the generation seed, recorded in the statement. The file is written to a temporary name
    and renamed, so ``path`` never holds half a file.
    """
    pixels = _check_image(image)
    record = _claimed_record(provenance)
    if (model_name, model_version, weights_sha256) != (record.model.name, record.model.version,
                                                       record.model.weights_sha256):
        raise InputError(f"the provenance record {record.provenance_id} vouches for model {record.model.name} "
                         f"{record.model.version} with weights {record.model.weights_sha256[:16]}..., not "
                         f"{model_name} {model_version} with weights {weights_sha256[:16]}...; use the record "
                         "issued for this deployment")
    report = normalise_report(report_text)
    if not report:
        raise InputError("the report text is empty; a synthetic study records the report it was generated from")
    when = (created_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)

    dataset = _base_dataset(pixels, record, modality, when)
    digest = pixel_sha256(pixels)
    statement = sign(ImageStatement(
        sop_instance_uid=str(dataset.SOPInstanceUID), pixel_sha256=digest, report_sha256=report_sha256(report),
        weights_sha256=weights_sha256, provenance_id=record.provenance_id, record_sha256=provenance.sha256,
        key_id=signer.key_id, created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"), seed=seed,
    ), signer)
    _add_private_block(dataset, record, provenance, statement, report)

    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except (ValueError, TypeError) as error:
        raise DicomError(f"pydicom could not encode the study: {error}", path=path) from None
    written = write_atomic(path, buffer.getvalue())
    return WrittenStudy(path=written, study_instance_uid=str(dataset.StudyInstanceUID),
                        series_instance_uid=str(dataset.SeriesInstanceUID),
                        sop_instance_uid=str(dataset.SOPInstanceUID), pixel_sha256=digest, statement=statement)


def _check_image(image: np.ndarray) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.ndim != 2 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InputError(f"a synthetic study holds one greyscale frame of shape (rows, columns); got {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise InputError(f"pixels must be uint8 or uint16, not {pixels.dtype}; convert float images with "
                         "medsign_forensics.dicom.pixels.quantize")
    if max(pixels.shape) > 0xFFFF:
        raise InputError(f"DICOM rows and columns are at most 65535; got {pixels.shape}")
    return np.ascontiguousarray(pixels)


def _claimed_record(provenance: SignedDocument) -> ProvenanceRecord:
    if len(provenance.signature) != SIGNATURE_BYTES:
        raise InputError(f"the provenance record's signature has {len(provenance.signature)} bytes, not "
                         f"{SIGNATURE_BYTES}; pass the signed record exactly as the registry holds it")
    try:
        return ProvenanceRecord.from_dict(parse_canonical(provenance.payload, "provenance record"))
    except InputError as error:
        raise InputError(f"the provenance record cannot be embedded: {error}") from None


def _base_dataset(pixels: np.ndarray, record: ProvenanceRecord, modality: Modality, when: datetime) -> Dataset:
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    sop_instance_uid = new_uid()
    bits = 8 if pixels.dtype == np.uint8 else 16

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MEDSIGN_{__version__}"[:16]

    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SECONDARY_CAPTURE_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.TimezoneOffsetFromUTC = "+0000"
    # Patient: a placeholder that can never be mistaken for a person.
    ds.PatientName = "SYNTHETIC^IMAGE"
    ds.PatientID = f"SYN-{secrets.token_hex(6).upper()}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientComments = "Synthetic image generated by an AI model; it depicts no real patient."
    # General Study
    ds.StudyInstanceUID = new_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYN1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic chest radiograph (AI-generated)"
    # General Series
    ds.Modality = modality.value
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AI-generated synthetic image"
    ds.BodyPartExamined = "CHEST"
    # General Equipment and SC Equipment: the generator
    ds.Manufacturer = record.issuer
    ds.ManufacturerModelName = record.model.name
    ds.SoftwareVersions = [record.model.version, f"{SOFTWARE_NAME} {__version__}"]
    ds.ConversionType = "SYN"
    ds.SecondaryCaptureDeviceManufacturer = SOFTWARE_NAME
    ds.SecondaryCaptureDeviceManufacturerModelName = record.model.name
    ds.SecondaryCaptureDeviceSoftwareVersions = [f"{SOFTWARE_NAME} {__version__}"]
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    ds.ContributingEquipmentSequence = [_synthesizing_equipment(record, when)]
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # radiological convention: patient's right on the image left
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SyntheticData = "YES"
    ds.DerivationDescription = (f"Synthesized by {record.model.name} {record.model.version}, deployment "
                                f"{record.deployment}, provenance {record.provenance_id}")[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(f"<u{bits // 8}", copy=False).tobytes()
    return ds


def _synthesizing_equipment(record: ProvenanceRecord, when: datetime) -> Dataset:
    purpose = Dataset()
    purpose.CodeValue = codes.DCM.SynthesizingEquipment.value
    purpose.CodingSchemeDesignator = codes.DCM.SynthesizingEquipment.scheme_designator
    purpose.CodeMeaning = codes.DCM.SynthesizingEquipment.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = record.issuer
    item.ManufacturerModelName = record.model.name
    item.SoftwareVersions = [record.model.version]
    item.DeviceSerialNumber = record.deployment[:64]
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S") + "+0000"
    item.ContributionDescription = (f"AI image synthesis; weights SHA-256 {record.model.weights_sha256}; "
                                    f"provenance {record.provenance_id}")
    return item


def _add_private_block(dataset: Dataset, record: ProvenanceRecord, provenance: SignedDocument,
                       statement: SignedDocument, report: str) -> None:
    block = dataset.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    values: dict[Element, object] = {
        Element.PROVENANCE_ID: record.provenance_id,
        Element.KEY_ID: record.key_id,
        Element.RECORD: provenance.text,
        Element.RECORD_SIGNATURE: provenance.signature,
        Element.STATEMENT: statement.text,
        Element.STATEMENT_SIGNATURE: statement.signature,
        Element.REPORT_TEXT: report,
    }
    for element, value in values.items():
        block.add_new(element, VR[element], value)
