import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medsign_forensics.errors import ImageReadError
from medsign_forensics.imageio import ImageFormat, read_image, rgb_to_grey


def gradient(h=40, w=60):
    return np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).astype(np.uint8)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("TIFF", ".tif"), ("WEBP", ".webp"), ("BMP", ".bmp")])
def test_lossless_grey_formats_round_trip(tmp_path, fmt, suffix):
    data = gradient()
    path = tmp_path / f"x{suffix}"
    Image.fromarray(data).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image = read_image(path)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == data.shape
    np.testing.assert_allclose(image.pixels, data / 255.0, atol=1e-6)
    assert image.notes == ()


def test_jpeg_close(tmp_path):
    data = gradient()
    Image.fromarray(data).save(tmp_path / "x.jpg", quality=95)
    image = read_image(tmp_path / "x.jpg")
    assert image.format is ImageFormat.JPEG
    assert np.abs(image.pixels - data / 255.0).mean() < 0.02


def test_sixteen_bit_png(tmp_path):
    data = (np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.bits_stored == 16
    np.testing.assert_allclose(image.pixels, data / 65535.0, atol=1e-6)


def test_rgb_and_alpha_become_luma(tmp_path):
    rgb = np.zeros((10, 10, 4), np.uint8)
    rgb[..., 0], rgb[..., 3] = 255, 128
    Image.fromarray(rgb, "RGBA").save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    np.testing.assert_allclose(image.pixels, 0.299, atol=1e-3)
    assert image.source_channels == 3
    assert any("alpha" in n for n in image.notes) and any("luma" in n for n in image.notes)
    assert rgb_to_grey(np.array([[[0.0, 1.0, 0.0]]])).item() == pytest.approx(0.587)


def test_wrong_extension_is_read_by_content_and_noted(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "x.dcm", format="PNG")
    image = read_image(tmp_path / "x.dcm")
    assert image.format is ImageFormat.PNG
    assert any("extension .dcm" in n for n in image.notes)


def test_multiframe_uses_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "x.tif", save_all=True, append_images=frames[1:])
    image = read_image(tmp_path / "x.tif")
    assert image.frames == 2 and image.pixels.mean() == pytest.approx(10 / 255, abs=1e-6)


def _png_with_declared_size(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (b"hello world, not an image at all" * 5, "not a supported image"),
        (_png_with_declared_size(60000, 60000), "decompression bomb"),
        (_png_with_declared_size(0, 10), ""),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_png(tmp_path):
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "t.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def _dicom(tmp_path, array, *, photometric="MONOCHROME2", bits_stored=None, pixels=True, name="x.dcm"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = array.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if pixels:
        ds.PixelData = array.tobytes()
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_twelve_bit_and_monochrome1(tmp_path):
    array = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16)
    image = read_image(_dicom(tmp_path, array, bits_stored=12))
    np.testing.assert_allclose(image.pixels, array / 4095.0, atol=1e-6)
    inverted = read_image(_dicom(tmp_path, array, bits_stored=12, photometric="MONOCHROME1", name="m1.dcm"))
    np.testing.assert_allclose(inverted.pixels, 1 - array / 4095.0, atol=1e-6)
    assert "MONOCHROME1 inverted" in inverted.notes


def test_dicom_without_pixel_data(tmp_path):
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(_dicom(tmp_path, np.zeros((4, 4), np.uint8), pixels=False))


def test_dicom_huge_declared_dimensions(tmp_path):
    path = _dicom(tmp_path, np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 65535, 65535
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(path)


def test_dicom_truncated_pixel_data(tmp_path):
    path = _dicom(tmp_path, np.zeros((64, 64), np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-3000])
    with pytest.raises(ImageReadError):
        read_image(path)


def test_real_dicom_files(real_data):
    files = sorted((real_data / "real-dicom").glob("*.dcm"))
    assert files
    for path in files:
        image = read_image(path)
        assert image.format is ImageFormat.DICOM and image.pixels.ndim == 2
        assert 0.0 <= image.pixels.min() < image.pixels.max() <= 1.0
    mono1 = read_image(real_data / "real-dicom" / "siim-cr-chest-mono1.dcm").pixels
    mono2 = read_image(real_data / "real-dicom" / "siim-cr-chest-mono2.dcm").pixels
    # The two files hold the same stored values and differ only in Photometric Interpretation, so the
    # MONOCHROME1 one must come back as the negative of the MONOCHROME2 one.
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_named_file_without_dicom_content_is_not_dicom(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ImageReadError, match="no DICM preamble and no DICOM image attributes"):
        read_image(path)


def test_dicom_pixel_array_that_does_not_fit_the_declared_size(tmp_path):
    path = _dicom(tmp_path, np.zeros((8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    ds.PixelData = bytes(128)  # two frames' worth for a single-frame 8x8 image
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="does not fit the declared 8x8"):
        read_image(path)


def test_dicom_empty_pixel_data_and_palette_without_lut(tmp_path):
    path = _dicom(tmp_path, np.zeros((8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    ds.PixelData = b""
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="pixel data element is empty"):
        read_image(path)
    palette = _dicom(tmp_path, np.zeros((8, 8), np.uint8), photometric="PALETTE COLOR", name="p.dcm")
    with pytest.raises(ImageReadError, match="lookup table is unusable"):
        read_image(palette)


def test_huge_dicom_is_area_averaged_while_decoding(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 4096, size=(301, 250), dtype=np.uint16)
    path = _dicom(tmp_path, array, bits_stored=12)
    full = read_image(path)
    small = read_image(path, max_decoded_pixels=60 * 60)
    factor = 5  # ceil(sqrt(301 * 250 / 3600))
    assert small.pixels.shape == (301 // factor, 250 // factor) and small.pixels.dtype == np.float32
    expected = full.pixels[: 60 * factor, : 50 * factor].reshape(60, factor, 50, factor).mean(axis=(1, 3))
    assert np.allclose(small.pixels, expected, atol=1e-6)
    assert any("area-averaged by 5" in note for note in small.notes)
    assert read_image(path, max_decoded_pixels=10**6).pixels.shape == (301, 250)  # small images untouched
