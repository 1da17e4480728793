import numpy as np
import pytest

from medsign_forensics.errors import DatasetError
from medsign_forensics.watermark.data import FolderSource, TrainingBatches, centre_square, random_square_crop


def test_folder_source_reads_grey_images(image_folder):
    source = FolderSource(image_folder)
    assert len(source) == 6
    image = source.image(0)
    assert image.shape == (96, 96) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="no PNG"):
        FolderSource(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        FolderSource(tmp_path / "nope")


def test_batches_are_seeded_and_sized(image_folder):
    source = FolderSource(image_folder)
    a = next(TrainingBatches(source, size=48, batch=3, rng=np.random.default_rng(4)))
    b = next(TrainingBatches(source, size=48, batch=3, rng=np.random.default_rng(4)))
    assert a.shape == (3, 1, 48, 48) and np.array_equal(a.numpy(), b.numpy())


def test_crops_and_centre_square():
    image = np.random.default_rng(0).random((80, 120), dtype=np.float32)
    crop = random_square_crop(image, 32, np.random.default_rng(0))
    assert crop.shape == (32, 32)
    assert np.array_equal(centre_square(image, 80), image[:, 20:100])
