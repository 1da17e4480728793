"""The bad-input corpus: more than 250 malformed or awkward files that every reader must handle with one clear line.

Categories: zero-byte files, truncated files of every format, wrong extensions, huge declared dimensions
(decompression bombs), DICOM without pixel data, odd and inconsistent bit depths, multi-frame images,
pixel data of the wrong length, broken compressed DICOM, random bytes, valid magic numbers followed by
garbage, text and other non-image formats, tiny images, dangling links, compressed transfer syntaxes (RLE,
JPEG 2000, deflate; intact and truncated), and file names that a report must keep and defuse (formula-like
names, bytes that are not UTF-8). Some of these are legal but odd (a 12-bit DICOM, a multi-page TIFF, a DICOM
named .png): those must be verified normally (:attr:`BadInput.readable`); the rest must be recorded as errors
whose message is one line that names the file, with no traceback and no "internal error".

:func:`write_suite` writes the corpus; the scan tests check every file's line, and
``benchmarks/bad_input_suite.py`` times a scan of it.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medsign_forensics.attacks.codec import to_uint8


@dataclass(frozen=True)
class BadInput:
    path: Path
    category: str
    readable: bool  # True: legal but odd, must be verified; False: must be an error line


def _png_bytes(pixels: np.ndarray, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _image_bytes(pixels: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int, pixels: np.ndarray) -> bytes:
    data = bytearray(_image_bytes(pixels, "JPEG", quality=80))
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def _bmp_declaring(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\0" * 16


def _gif_declaring(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def _tiff_declaring(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd_offset = 8 + 16
    out = b"II*\x00" + struct.pack("<I", ifd_offset) + b"\0" * 16 + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", 0)


def _dicom(**overrides) -> bytes:
    """A small Secondary Capture object; keyword overrides set or (value None) delete attributes."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = overrides.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8).tobytes()
    for name, value in overrides.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _compressed(data: bytes, syntax: str) -> bytes:
    """The same DICOM object re-encoded in another transfer syntax (pydicom's encoders: RLE, JPEG 2000 via
    pylibjpeg-openjpeg, deflate)."""
    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(io.BytesIO(data))
    if syntax == "1.2.840.10008.1.2.1.99":  # deflated explicit VR: the whole dataset is compressed on write
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    else:
        ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom_valid_sized(rows: int, columns: int, bits: int, frames: int = 1, **overrides) -> bytes:
    rng = np.random.default_rng(1)
    top = (1 << bits) - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    pixels = rng.integers(0, top + 1, (frames, rows, columns)).astype(dtype)
    extra = {"NumberOfFrames": frames} if frames > 1 else {}
    return _dicom(Rows=rows, Columns=columns, BitsAllocated=8 if bits <= 8 else 16, BitsStored=bits,
                  HighBit=bits - 1, PixelData=pixels.tobytes(), **extra, **overrides)


def write_suite(folder: Path) -> list[BadInput]:
    """Write the suite into ``folder`` (created) and return what each file is."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    grey = to_uint8(rng.normal(0.5, 0.15, (96, 96)))
    items: list[BadInput] = []

    def add(name: str, data: bytes, category: str, readable: bool = False) -> None:
        path = folder / name
        path.write_bytes(data)
        items.append(BadInput(path, category, readable))

    formats = {
        "png": _png_bytes(grey),
        "jpg": _image_bytes(grey, "JPEG", quality=85),
        "tif": _image_bytes(grey, "TIFF"),
        "webp": _image_bytes(grey, "WEBP", quality=80),
        "bmp": _image_bytes(grey, "BMP"),
        "gif": _image_bytes(grey, "GIF"),
        "dcm": _dicom_valid_sized(96, 96, 8),
    }
    # zero-byte files
    for ext in [*formats, "txt", "", "jpeg", "dicom"]:
        add(f"zero-byte{'.' + ext if ext else ''}", b"", "zero-byte")
    # truncations of every format at several lengths
    for ext, data in formats.items():
        cuts = sorted({4, 8, 16, 33, 64, 132, 200, len(data) // 4, len(data) // 2, len(data) - 200})
        for cut in cuts:
            if 0 < cut < len(data) - 150:
                add(f"truncated-{cut}.{ext}", data[:cut], "truncated")
    # wrong extensions: legal content, misleading name (readable)
    for ext, data in formats.items():
        other = {"png": "dcm", "jpg": "png", "tif": "jpg", "webp": "tif", "bmp": "webp", "gif": "bmp",
                 "dcm": "png"}[ext]
        add(f"wrong-extension-{ext}-as.{other}", data, "wrong extension", readable=True)
    add("wrong-extension-png-as.txt", formats["png"], "wrong extension", readable=True)
    # huge declared dimensions (decompression bombs) and empty ones
    for width, height in [(100_000, 100_000), (65_535, 65_535), (20_000, 10_000), (1, 2**31 - 1), (0, 0), (0, 100)]:
        add(f"declared-{width}x{height}.png", _png_declaring(width, height), "huge or empty declared size")
    for width, height in [(65_500, 65_500), (30_000, 30_000)]:
        add(f"declared-{width}x{height}.jpg", _jpeg_declaring(width, height, grey), "huge or empty declared size")
    for width, height in [(50_000, 50_000), (2**30, 4)]:
        add(f"declared-{width}x{height}.bmp", _bmp_declaring(width, height), "huge or empty declared size")
        add(f"declared-{width}x{height}.tif", _tiff_declaring(width, height), "huge or empty declared size")
    add("declared-65535x65535.gif", _gif_declaring(65_535, 65_535), "huge or empty declared size")
    for rows, columns, frames in [(65_535, 65_535, 1), (4096, 4096, 1000), (0, 64, 1), (64, 0, 1)]:
        extra = {"NumberOfFrames": frames} if frames > 1 else {}
        add(f"declared-{rows}x{columns}x{frames}.dcm", _dicom(Rows=rows, Columns=columns, **extra),
            "huge or empty declared size")
    # DICOM without pixel data
    add("no-pixel-data.dcm", _dicom(PixelData=None), "DICOM without pixel data")
    add("no-pixel-data-no-size.dcm", _dicom(PixelData=None, Rows=None, Columns=None), "DICOM without pixel data")
    add("no-pixel-data-sr.dcm", _dicom(PixelData=None, Rows=None, Columns=None, BitsAllocated=None,
                                       SamplesPerPixel=None, PhotometricInterpretation=None),
        "DICOM without pixel data")
    add("float-pixel-data.dcm", _dicom(PixelData=None, FloatPixelData=np.zeros(64 * 64, np.float32).tobytes(),
                                       BitsAllocated=32), "DICOM without pixel data")
    add("pixel-data-empty.dcm", _dicom(PixelData=b""), "DICOM without pixel data")
    # odd or inconsistent bit depths
    for allocated, stored in [(12, 12), (24, 24), (3, 3), (64, 64), (8, 12), (16, 0), (16, 17), (0, 0)]:
        add(f"bits-{allocated}-{stored}.dcm", _dicom(BitsAllocated=allocated, BitsStored=stored,
                                                     HighBit=max(stored - 1, 0)), "odd bit depth")
    for bits in (1, 10, 12, 14, 15, 16):
        readable = bits != 1
        if bits == 1:
            pixels = np.packbits(np.random.default_rng(3).integers(0, 2, 64 * 64).astype(np.uint8)).tobytes()
            add("bits-1-1.dcm", _dicom(BitsAllocated=1, BitsStored=1, HighBit=0, PixelData=pixels),
                "odd bit depth", readable=True)
            continue
        add(f"bits-16-{bits}.dcm", _dicom_valid_sized(64, 64, bits), "odd bit depth", readable=readable)
    add("signed-16.dcm", _dicom_valid_sized(64, 64, 16, PixelRepresentation=1), "odd bit depth", readable=True)
    add("png-16-bit.png", _png_bytes(grey.astype(np.uint16) * 257), "odd bit depth", readable=True)
    add("png-1-bit.png", _image_bytes((grey > 128).astype(np.uint8) * 255, "PNG"), "odd bit depth", readable=True)
    add("tiff-float-nan.tif", _image_bytes(np.full((64, 64), np.nan, np.float32), "TIFF"), "odd bit depth")
    add("tiff-float-range.tif", _image_bytes(np.linspace(-5, 5, 64 * 64, dtype=np.float32).reshape(64, 64), "TIFF"),
        "odd bit depth", readable=True)
    add("tiff-int32-range.tif", _image_bytes(np.full((64, 64), 2**20, np.int32), "TIFF"), "odd bit depth")
    # multi-frame images
    add("multiframe-3.dcm", _dicom_valid_sized(64, 64, 8, frames=3), "multi-frame", readable=True)
    add("multiframe-declares-5-has-1.dcm", _dicom(NumberOfFrames=5), "multi-frame")
    add("multiframe-16bit-2.dcm", _dicom_valid_sized(64, 64, 12, frames=2), "multi-frame", readable=True)
    pages = [Image.fromarray(np.roll(grey, 7 * i, axis=1)) for i in range(4)]
    for fmt, ext in (("TIFF", "tif"), ("GIF", "gif"), ("WEBP", "webp")):
        buffer = io.BytesIO()
        pages[0].save(buffer, format=fmt, save_all=True, append_images=pages[1:])
        add(f"multiframe-4.{ext}", buffer.getvalue(), "multi-frame", readable=True)
    # pixel data of the wrong length, broken encodings and syntaxes, inconsistent photometrics
    add("pixel-data-short.dcm", _dicom(PixelData=b"\0" * 100), "broken DICOM pixel data")
    add("pixel-data-long.dcm", _dicom(PixelData=b"\0" * 8192), "broken DICOM pixel data")
    add("samples-3-short.dcm", _dicom(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0),
        "broken DICOM pixel data")
    add("palette-without-lut.dcm", _dicom(PhotometricInterpretation="PALETTE COLOR"), "broken DICOM pixel data")
    add("unknown-transfer-syntax.dcm", _dicom(TransferSyntaxUID="1.2.3.4.5.6.7"), "broken DICOM pixel data")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    for uid, label in ((JPEGBaseline8Bit, "jpeg"), (JPEG2000Lossless, "j2k"), (RLELossless, "rle")):
        for index, fragment in enumerate((rng.bytes(500), b"\xff\xd8\xff" + rng.bytes(300), b"")):
            add(f"encapsulated-{label}-garbage-{index}.dcm",
                _dicom(TransferSyntaxUID=uid, PixelData=encapsulate([fragment or b"\0\0"])),
                "broken DICOM pixel data")
    add("dicom-gzip.dcm", gzip.compress(formats["dcm"]), "not an image")
    add("dicom-no-preamble.dcm", formats["dcm"][132:], "wrong extension", readable=True)
    add("dicom-preamble-only.dcm", b"\0" * 128 + b"DICM", "truncated")
    # valid magic numbers followed by garbage
    magics = {"png": b"\x89PNG\r\n\x1a\n", "jpg": b"\xff\xd8\xff\xe0", "tif": b"II*\x00", "tiff": b"MM\x00*",
              "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ", "bmp": b"BM", "gif": b"GIF89a", "dcm": b"\0" * 128 + b"DICM"}
    for ext, magic in magics.items():
        for size in (16, 1000):
            add(f"magic-then-garbage-{size}.{ext}", magic + rng.bytes(size), "magic then garbage")
    # random bytes under many names
    extensions = ["png", "jpg", "tif", "webp", "dcm", "bin", "", "gif", "bmp", "dicom"]
    for index in range(50):
        ext = extensions[index % len(extensions)]
        add(f"random-{index:02d}{'.' + ext if ext else ''}", rng.bytes(int(rng.integers(1, 20_000))),
            "random bytes")
    # text and other formats
    add("text.png", b"this is not an image\n" * 20, "not an image")
    add("html.jpg", b"<!DOCTYPE html><html><body>hello</body></html>", "not an image")
    add("json.dcm", b'{"Rows": 64, "Columns": 64}', "not an image")
    add("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image")
    add("pdf.tif", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "not an image")
    add("zip.png", b"PK\x03\x04" + rng.bytes(200), "not an image")
    add("utf16.txt", "\ufeffhello".encode("utf-16"), "not an image")
    # images too small to carry a watermark
    for size in (1, 8, 31):
        add(f"tiny-{size}x{size}.png", _png_bytes(np.full((size, size), 128, np.uint8)), "tiny image")
    add("tiny-1x4000.png", _png_bytes(np.full((1, 4000), 128, np.uint8)), "tiny image")
    # compressed transfer syntaxes a PACS stores (readable), and broken ones
    for bits in (8, 12, 16):
        for syntax, label in (("1.2.840.10008.1.2.5", "rle"), ("1.2.840.10008.1.2.4.90", "j2k")):
            data = _compressed(_dicom_valid_sized(64, 64, bits), syntax)
            add(f"compressed-{label}-{bits}bit.dcm", data, "compressed transfer syntax", readable=True)
            add(f"compressed-{label}-{bits}bit-truncated.dcm", data[: len(data) - 40], "broken DICOM pixel data")
    add("deflated-explicit-vr.dcm", _compressed(_dicom_valid_sized(64, 64, 8), "1.2.840.10008.1.2.1.99"),
        "compressed transfer syntax", readable=True)
    # file names a report must keep losslessly and defuse (formula injection, bytes that are not UTF-8)
    for name in ("=HYPERLINK(1).png", "+1.png", "-1.png", "@SUM(1).png", "tab\tname.png"):
        add(name, formats["png"], "odd file name", readable=True)
    raw_name = os.fsencode(folder) + b"/latin1-caf\xe9.png"
    with open(raw_name, "wb") as handle:
        handle.write(formats["png"])
    items.append(BadInput(Path(os.fsdecode(raw_name)), "odd file name", True))
    # links
    link = folder / "dangling-link.png"
    if not link.is_symlink():
        os.symlink(folder / "does-not-exist.png", link)
    items.append(BadInput(link, "dangling link", False))
    return items
