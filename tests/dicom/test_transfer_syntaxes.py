"""Every transfer syntax a PACS stores decodes to the same pixels and gets a normal verdict.

Built with dcmtk (dcmdjpeg, dcmcjpeg, dcmcjpls, dcmcrle) and pydicom's JPEG 2000 encoder from the real DICOM in
../shared/data; skipped cleanly when the tools or the data are absent. Decoding needs the pixel-data handlers
that scripts/setup.sh installs (pylibjpeg with its libjpeg, openjpeg and rle plugins).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsign_forensics.imageio import read_image
from medsign_forensics.verify import VerdictKind, Verifier

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-dicom" / "siim-cr-chest-mono2.dcm"
TOOLS = ("dcmdjpeg", "dcmcjpeg", "dcmcjpls", "dcmcrle")

pytestmark = [
    pytest.mark.skipif(not SOURCE.is_file(), reason="../shared/data/real-dicom is absent"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason="dcmtk is not installed (apt-get install dcmtk)"),
]


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("syntaxes")
    raw = folder / "raw.dcm"
    _run("dcmdjpeg", str(SOURCE), str(raw))
    made = {"raw": raw}
    for name, command in {"jpeg-lossless-p14": ("dcmcjpeg", "+el"), "jpeg-ls": ("dcmcjpls",),
                          "rle": ("dcmcrle",)}.items():
        made[name] = folder / f"{name}.dcm"
        _run(*command, str(raw), str(made[name]))
    twelve = pydicom.dcmread(raw)  # a 12-bit image, then 12-bit JPEG (extended, process 2 & 4)
    twelve.PixelData = (twelve.pixel_array.astype(np.uint16) * 16).tobytes()
    twelve.BitsAllocated, twelve.BitsStored, twelve.HighBit = 16, 12, 11
    twelve.save_as(folder / "raw12.dcm")
    made["raw12"] = folder / "raw12.dcm"
    made["jpeg-12bit"] = folder / "jpeg-12bit.dcm"
    _run("dcmcjpeg", "+ee", str(made["raw12"]), str(made["jpeg-12bit"]))
    try:
        from pydicom.uid import JPEG2000Lossless

        j2k = pydicom.dcmread(raw)
        j2k.compress(JPEG2000Lossless)
        j2k.save_as(folder / "j2k.dcm")
        made["jpeg2000"] = folder / "j2k.dcm"
    except (RuntimeError, ImportError, ValueError, NotImplementedError):  # no JPEG 2000 encoder plugin here
        pass
    return made


@pytest.mark.parametrize("name", ["jpeg-lossless-p14", "jpeg-ls", "rle", "jpeg2000"])
def test_lossless_syntaxes_decode_to_the_same_pixels(variants, name):
    if name not in variants:
        pytest.skip(f"no encoder for {name} here")
    expected = read_image(variants["raw"]).pixels
    assert np.array_equal(read_image(variants[name]).pixels, expected)


def test_twelve_bit_jpeg_decodes_close_to_its_source(variants):
    decoded = read_image(variants["jpeg-12bit"])
    assert decoded.bits_stored == 12
    assert np.abs(decoded.pixels - read_image(variants["raw12"]).pixels).mean() < 0.01  # lossy, 12-bit


def test_every_variant_gets_a_normal_verdict(variants):
    with Verifier.open() as verifier:
        kinds = {name: verifier.try_verify_file(path).kind for name, path in variants.items()}
    assert all(kind is VerdictKind.NOT_DETECTED for kind in kinds.values()), kinds
