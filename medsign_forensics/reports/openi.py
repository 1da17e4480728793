"""The Open-i (Indiana University) chest X-ray reports, read straight from the torchxrayvision wheel.

torchxrayvision ships the 3,955 Open-i XML reports as ``torchxrayvision/data/NLMCXR_reports.tgz``. The data is
licensed CC BY-NC-ND 4.0, so it is read in place from the installed package and never copied into this
repository. Only that file is needed, which is why ``pip install --no-deps torchxrayvision`` is enough (its
dependencies would pull torchvision and a CUDA build of torch).
"""

from __future__ import annotations

import importlib.metadata
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

from medsign_forensics.errors import DatasetError
from medsign_forensics.reports.corpus import LoadedReports, Report, keep_non_empty

DISTRIBUTION = "torchxrayvision"
ARCHIVE_IN_WHEEL = "torchxrayvision/data/NLMCXR_reports.tgz"
SOURCE = "open-i"
LICENSE = "CC BY-NC-ND 4.0"
_REINSTALL = "reinstall it with `pip install --force-reinstall --no-deps torchxrayvision`"


def locate_archive() -> Path:
    """Path of the Open-i report archive inside the installed torchxrayvision distribution."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            "the Open-i reports come from the torchxrayvision package, which is not installed; "
            "install it with `pip install --no-deps torchxrayvision`."
        ) from None
    path = Path(str(distribution.locate_file(ARCHIVE_IN_WHEEL)))
    if not path.is_file():
        raise DatasetError(
            f"torchxrayvision {distribution.version} is installed but has no {ARCHIVE_IN_WHEEL}; {_REINSTALL}.",
            path=path,
        )
    return path


def _member_order(name: str) -> tuple[int, str]:
    """Sort ``ecgen-radiology/12.xml`` numerically, so reports come out as CXR1, CXR2, ..."""
    match = re.search(r"(\d+)\.xml$", name)
    return (int(match.group(1)) if match else -1, name)


def parse_openi_xml(data: bytes, *, member: str) -> Report:
    """One Open-i XML document -> Report (FINDINGS, IMPRESSION, MeSH ``major`` tags, id ``CXR<n>``)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DatasetError(f"report {member} in the Open-i archive is not valid XML ({exc}); {_REINSTALL}.") from None
    uid = root.find("uId")
    report_id = (uid.get("id") if uid is not None else None) or Path(member).stem
    sections = {node.get("Label"): (node.text or "").strip() for node in root.iter("AbstractText")}
    mesh = tuple(" ".join(node.text.split()) for node in root.iter("major") if node.text and node.text.strip())
    return Report(
        report_id=report_id,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh=mesh,
        source=SOURCE,
    )


def read_openi(archive: Path | None = None) -> LoadedReports:
    """Every Open-i report, in id order; ``archive`` defaults to the one in the torchxrayvision wheel."""
    path = locate_archive() if archive is None else archive
    reports: list[Report] = []
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                             key=lambda m: _member_order(m.name))
            for member in members:
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                reports.append(parse_openi_xml(handle.read(), member=member.name))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(
            f"the Open-i report archive is corrupt or truncated ({exc.__class__.__name__}: {exc}); {_REINSTALL}.",
            path=path,
        ) from None
    if not reports:
        raise DatasetError(f"the Open-i report archive holds no XML reports; {_REINSTALL}.", path=path)
    return keep_non_empty(reports, source=SOURCE)
