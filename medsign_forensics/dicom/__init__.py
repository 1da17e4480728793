"""DICOM studies of synthetic images: the writer, the provenance block, and the reader that checks it."""

from medsign_forensics.dicom.pixels import pixel_sha256, quantize, report_sha256
from medsign_forensics.dicom.private import PRIVATE_CREATOR
from medsign_forensics.dicom.reader import (
    Check,
    CheckName,
    CheckStatus,
    ProvenanceBlock,
    StudyCheck,
    check_study,
    read_dataset,
    read_provenance_block,
)
from medsign_forensics.dicom.uids import SECONDARY_CAPTURE_IMAGE_STORAGE
from medsign_forensics.dicom.writer import Modality, WrittenStudy, write_synthetic_study

__all__ = [
    "PRIVATE_CREATOR", "SECONDARY_CAPTURE_IMAGE_STORAGE", "Check", "CheckName", "CheckStatus", "Modality",
    "ProvenanceBlock", "StudyCheck", "WrittenStudy", "check_study", "pixel_sha256", "quantize",
    "read_dataset", "read_provenance_block", "report_sha256", "write_synthetic_study",
]
