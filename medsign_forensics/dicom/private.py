"""The MedSign private block: where a study's provenance lives inside the DICOM object.

The block is reserved by the Private Creator ``MEDSIGN_FORENSICS 1`` in an odd group (written in 0x0071; the
reader searches every odd group for the creator string, so a block that a PACS or an editor moved to another
slot is still found). Element offsets within the block:

====  ====  =================================================================
0x01  LO    provenance ID (``msp-...``)
0x02  LO    key id of the issuer that signed the provenance record
0x03  UT    provenance record, canonical JSON (ASCII)
0x04  OB    Ed25519 signature of the record (64 bytes)
0x05  UT    per-image statement, canonical JSON (ASCII)
0x06  OB    Ed25519 signature of the statement (64 bytes)
0x07  UT    report text the image was generated from (UTF-8, normalised)
====  ====  =================================================================

Elements are read by their offset within the block found by creator string, never by a fixed tag. Values that
came back as UN (after an implicit-VR round trip) are decoded from their raw bytes.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.dataset import Dataset, PrivateBlock

PRIVATE_CREATOR = "MEDSIGN_FORENSICS 1"
PRIVATE_GROUP = 0x0071


class Element(IntEnum):
    """Offsets of our elements inside the private block."""

    PROVENANCE_ID = 0x01
    KEY_ID = 0x02
    RECORD = 0x03
    RECORD_SIGNATURE = 0x04
    STATEMENT = 0x05
    STATEMENT_SIGNATURE = 0x06
    REPORT_TEXT = 0x07


VR = {
    Element.PROVENANCE_ID: "LO",
    Element.KEY_ID: "LO",
    Element.RECORD: "UT",
    Element.RECORD_SIGNATURE: "OB",
    Element.STATEMENT: "UT",
    Element.STATEMENT_SIGNATURE: "OB",
    Element.REPORT_TEXT: "UT",
}


def find_block(dataset: Dataset) -> PrivateBlock | None:
    """The block reserved by :data:`PRIVATE_CREATOR` in any odd group, or None."""
    for element in dataset:
        if not element.tag.is_private_creator:
            continue
        value = element.value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str) and value.strip(" \x00") == PRIVATE_CREATOR:
            # Built directly: pydicom's own lookup compares the raw value, which fails for padded UN bytes.
            return PrivateBlock((element.tag.group, PRIVATE_CREATOR), dataset, element.tag.element)
    return None
