"""UIDs: the SOP class we write and fresh instance UIDs.

Instance UIDs are always fresh random ``2.25.`` UIDs (pydicom's ``generate_uid`` without a prefix derives
them from a UUID4), never derived from the generation seed: two studies made with the same seed are still two
objects, and PACS such as Orthanc silently ignore a re-sent SOP Instance UID.
"""

from __future__ import annotations

from pydicom.uid import UID, generate_uid

SECONDARY_CAPTURE_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")


def new_uid() -> UID:
    """A fresh, globally unique UID under the ``2.25`` (UUID) root."""
    return generate_uid(prefix=None)
