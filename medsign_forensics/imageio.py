"""Read any suspect file (PNG, JPEG, TIFF, WebP, BMP, GIF, DICOM) safely into one normalised form.

Suspect files are untrusted: the format is decided by the file's content, never by its extension; declared
dimensions are checked against a pixel budget BEFORE anything is decoded (decompression bombs); every failure
becomes one :class:`ImageReadError` naming the file and the problem. The result is always a greyscale float32
image in [0, 1] where brighter means denser (MONOCHROME2 sense), because the watermark lives in luminance.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medsign_forensics.errors import ImageReadError

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k: far above any radiograph, far below a memory exhaustion
# ITU-R BT.601 luma weights (R, G, B): the project's one RGB-to-grey conversion, for numpy and torch code alike.
BT601_LUMA = (0.299, 0.587, 0.114)
_LUMA = np.array(BT601_LUMA, dtype=np.float32)


class ImageFormat(str, Enum):
    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    WEBP = "webp"
    BMP = "bmp"
    GIF = "gif"
    DICOM = "dicom"


_EXTENSIONS = {
    ImageFormat.PNG: {".png"},
    ImageFormat.JPEG: {".jpg", ".jpeg", ".jpe", ".jfif"},
    ImageFormat.TIFF: {".tif", ".tiff"},
    ImageFormat.WEBP: {".webp"},
    ImageFormat.BMP: {".bmp"},
    ImageFormat.GIF: {".gif"},
    ImageFormat.DICOM: {".dcm", ".dicom", ".dic", ""},
}


@dataclass(frozen=True)
class SuspectImage:
    """A decoded suspect file. ``pixels`` is float32 (H, W) in [0, 1]; ``notes`` say what was normalised."""

    path: Path
    format: ImageFormat
    pixels: np.ndarray
    bits_stored: int
    source_channels: int
    frames: int = 1
    notes: tuple[str, ...] = ()
    dataset: Any = field(default=None, repr=False)  # the pydicom Dataset for DICOM input

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (H, W, 3) array, in the array's own scale, as float32."""
    return np.asarray(rgb[..., :3], dtype=np.float32) @ _LUMA


def sniff_format(head: bytes) -> ImageFormat | None:
    """Identify a file by its first bytes (at least 132 of them for DICOM)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ImageFormat.TIFF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if head[:2] == b"BM":
        return ImageFormat.BMP
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ImageFormat.GIF
    if head[128:132] == b"DICM":
        return ImageFormat.DICOM
    return None


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_decoded_pixels: int | None = None) -> SuspectImage:
    """Decode ``path`` into a :class:`SuspectImage` or raise one :class:`ImageReadError`.

    ``max_decoded_pixels``: a DICOM image larger than this is area-averaged by an integer factor while it is
    converted, so that no full-resolution float copy is made (a reader that needs only a working-size image,
    as verification does, then stays within about 1 GB for a 10000 x 10000 16-bit image). A note says so.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError("no such file", path=path)
    if not path.is_file():
        raise ImageReadError("not a regular file", path=path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as error:
        raise ImageReadError(f"cannot be opened ({error.strerror or error})", path=path) from None
    if not head:
        raise ImageReadError("the file is empty (0 bytes)", path=path)
    kind = sniff_format(head)
    notes: list[str] = []
    suffix = path.suffix.lower()
    if kind is None and suffix in _EXTENSIONS[ImageFormat.DICOM]:
        kind = ImageFormat.DICOM  # DICOM without the 128-byte preamble: let pydicom judge
        notes.append("DICOM file without the DICM preamble")
    if kind is None:
        raise ImageReadError(
            "not a supported image: the content is not PNG, JPEG, TIFF, WebP, BMP, GIF or DICOM", path=path
        )
    if suffix and suffix not in _EXTENSIONS[kind]:
        notes.append(f"extension {suffix} does not match the content ({kind.value})")
    if kind is ImageFormat.DICOM:
        return _read_dicom(path, max_pixels=max_pixels, notes=notes, preamble=head[128:132] == b"DICM",
                           max_decoded_pixels=max_decoded_pixels)
    return _read_raster(path, kind, max_pixels=max_pixels, notes=notes)


def _check_budget(path: Path, pixels: int, max_pixels: int) -> None:
    if pixels <= 0:
        raise ImageReadError("declares an empty image (zero width or height)", path=path)
    if pixels > max_pixels:
        raise ImageReadError(
            f"declares {pixels:,} pixels, more than the limit of {max_pixels:,} (possible decompression bomb)",
            path=path,
        )


def _read_raster(path: Path, kind: ImageFormat, *, max_pixels: int, notes: list[str]) -> SuspectImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                frames = int(getattr(image, "n_frames", 1))
                _check_budget(path, width * height, max_pixels)
                if frames > 1:
                    notes.append(f"first of {frames} frames used")
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image)
                pixels, bits, channels = _pil_to_grey(upright, notes)
    except ImageReadError as error:
        if error.path is None:
            error.path = str(path)  # raised by _pil_to_grey, which does not know the file
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot be decoded as {kind.value.upper()}: the data after its signature is damaged "
                             "or not of that format", path=path) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"cannot be decoded as {kind.value.upper()}: {error}", path=path) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageReadError(f"corrupt or truncated {kind.value.upper()} ({error})", path=path) from None
    return SuspectImage(path, kind, pixels, bits, channels, frames, tuple(notes))


def _pil_to_grey(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, int, int]:
    """Greyscale float32 in [0, 1], the source bit depth and the source channel count."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0, 16, 1
    if mode == "I":
        data = np.asarray(image, dtype=np.float64)
        if data.min() < 0 or data.max() > 65535:
            raise ImageReadError(f"32-bit integer pixels outside 0..65535 (range {data.min():g}..{data.max():g})")
        return (data / 65535.0).astype(np.float32), 16, 1
    if mode == "F":
        data = np.asarray(image, dtype=np.float32)
        if not np.isfinite(data).all():
            raise ImageReadError("floating-point pixels contain NaN or infinity")
        if data.min() < 0.0 or data.max() > 1.0:
            notes.append(f"float pixels {data.min():g}..{data.max():g} clipped to [0, 1]")
        return np.clip(data, 0.0, 1.0), 32, 1
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0, 8, 1
    if mode == "LA":
        notes.append("alpha channel dropped")
        return np.asarray(image.getchannel("L"), dtype=np.float32) / 255.0, 8, 1
    if mode in ("RGBA", "PA") or (mode == "P" and "transparency" in image.info):
        notes.append("alpha channel dropped")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = 1 if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]) else 3
    if channels == 3:
        notes.append("colour converted to BT.601 luma")
    return rgb_to_grey(rgb) / 255.0, 8, channels


def _read_dicom(path: Path, *, max_pixels: int, notes: list[str], preamble: bool = True,
                max_decoded_pixels: int | None = None) -> SuspectImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, force=True)
        if not preamble and not any(name in dataset for name in ("SOPClassUID", "PixelData", "Rows")):
            # forced parsing turns almost any bytes into some "dataset": that is not evidence of DICOM
            raise ImageReadError("not a supported image: the content is not PNG, JPEG, TIFF, WebP, BMP, GIF or "
                                 "DICOM (no DICM preamble and no DICOM image attributes)", path=path)
    except ImageReadError:
        raise
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
            OverflowError, struct.error) as error:
        raise ImageReadError(f"corrupt or truncated DICOM ({error})", path=path) from None
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise ImageReadError("DICOM float pixel data is not supported", path=path)
        raise ImageReadError("DICOM object has no pixel data", path=path)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits_allocated = int(dataset.BitsAllocated)
        bits_stored = int(dataset.get("BitsStored", bits_allocated) or bits_allocated)
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    except (AttributeError, TypeError, ValueError) as error:
        raise ImageReadError(f"DICOM image attributes are missing or malformed ({error})", path=path) from None
    _check_budget(path, rows * columns * max(frames, 1) * max(samples, 1), max_pixels)
    if not dataset.get("PixelData"):
        raise ImageReadError("DICOM pixel data element is empty", path=path)
    if bits_allocated not in (1, 8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
        raise ImageReadError(
            f"unsupported DICOM bit depth (BitsAllocated {bits_allocated}, BitsStored {bits_stored})", path=path
        )
    try:
        array = dataset.pixel_array
    except Exception as error:  # pydicom's decoders raise many types; all mean "cannot decode"
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise ImageReadError(f"cannot decode DICOM pixel data ({name}): {error}", path=path) from None
    if frames > 1:
        array = array[0]
        notes.append(f"first of {frames} frames used")
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            array = apply_color_lut(array, dataset)
        except Exception as error:  # missing or malformed lookup tables raise several types
            raise ImageReadError(f"PALETTE COLOR image whose colour lookup table is unusable ({error})",
                                 path=path) from None
        bits_stored = 16 if array.dtype.itemsize > 1 else 8
        photometric = "RGB"
    if tuple(array.shape[:2]) != (rows, columns) or array.ndim not in (2, 3) or \
            (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageReadError(f"the decoded pixel array has shape {tuple(array.shape)}, which does not fit the "
                             f"declared {columns}x{rows} image with {samples} sample(s) per pixel", path=path)
    factor = 1
    if max_decoded_pixels is not None and rows * columns > max_decoded_pixels:
        factor = int(np.ceil(np.sqrt(rows * columns / max_decoded_pixels)))
        notes.append(f"{columns}x{rows} area-averaged by {factor} while decoding (bounded memory)")
    pixels = _dicom_to_unit(array, bits_stored=bits_stored, signed=signed, factor=factor)
    del array
    if pixels.ndim == 3:
        pixels = rgb_to_grey(pixels)
        notes.append(f"{photometric} converted to BT.601 luma")
    elif photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
        notes.append("MONOCHROME1 inverted")
    return SuspectImage(path, ImageFormat.DICOM, pixels.astype(np.float32), bits_stored, samples, frames,
                        tuple(notes), dataset)


def _dicom_to_unit(array: np.ndarray, *, bits_stored: int, signed: bool, factor: int = 1) -> np.ndarray:
    """Map stored values onto [0, 1] by the stored bit range (not by the image's own min and max), averaging
    ``factor`` x ``factor`` blocks on the way (edges that do not fill a block are dropped).

    Block rows are converted a strip at a time, in float32: a 10000 x 10000 16-bit image would be 400 MB as
    float32 and 800 MB as float64. float32 holds every integer below 2**24 exactly.
    """
    array = np.asarray(array)
    dtype = np.float64 if bits_stored > 24 else np.float32
    height, width = array.shape[0] // factor, array.shape[1] // factor
    out = np.empty((height, width, *array.shape[2:]), dtype=dtype)
    strip = max(1, 4096 // factor)  # output rows per strip
    for top in range(0, height, strip):
        bottom = min(top + strip, height)
        block = array[top * factor:bottom * factor, :width * factor].astype(dtype)
        if factor > 1:
            block = block.reshape(-1, factor, width, factor, *array.shape[2:]).mean(axis=(1, 3), dtype=dtype)
        out[top:bottom] = block
    if signed:
        out += 2.0 ** (bits_stored - 1)
    out /= 2.0**bits_stored - 1.0
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)
