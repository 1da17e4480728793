"""Image sources for stage-1 training and evaluation: a folder of images, or phantom renders.

A source hands out greyscale float32 (H, W) images in [0, 1] by index; :class:`TrainingBatches` turns one into
seeded batches of random square crops resized to the training size. The watermark must not depend on content,
so crops cover 50-100 % of the shorter edge: the extractor sees each texture at several scales.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from medsign_forensics.errors import DatasetError, ImageReadError, InputError
from medsign_forensics.imageio import read_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})


class ImageSource(Protocol):
    """Anything that hands out greyscale float32 (H, W) images in [0, 1] by index."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray: ...

    def describe(self) -> str: ...


class FolderSource:
    """Every PNG/JPEG/TIFF/BMP/WebP under ``root`` (recursively, sorted), read as BT.601 grey."""

    def __init__(self, root: Path, *, cache_size: int = 512) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError("the image folder does not exist; pass a folder of PNG/JPEG images", path=root)
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DatasetError("the folder holds no PNG, JPEG, TIFF, BMP or WebP images", path=root)
        self._read = lru_cache(maxsize=cache_size)(self._read_uncached)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        return self._read(index)

    def _read_uncached(self, index: int) -> np.ndarray:
        try:
            return read_image(self.paths[index]).pixels
        except ImageReadError as error:
            raise DatasetError(f"a training image cannot be read: {error}", path=self.paths[index]) from None

    def describe(self) -> str:
        return f"folder {self.root} ({len(self)} images)"


class PhantomSource:
    """Phantom chest radiographs with random findings; image ``i`` is rendered with seed ``seed_base + i``.

    Findings are drawn from a generator seeded by ``findings_seed`` so the same index always gives the same
    study. Renders are cached (phantoms cost far more to render than to train on).
    """

    def __init__(self, count: int, *, size: int = 256, seed_base: int = 0, findings_seed: int = 0) -> None:
        if count < 1:
            raise InputError(f"a phantom source needs at least one image, got {count}")
        try:
            from medsign_forensics.phantom.classifier_data import random_findings
            from medsign_forensics.phantom.renderer import render_study
        except ImportError as error:
            raise DatasetError(
                f"the phantom renderer is not available ({error}); train on a folder of images instead"
            ) from None
        self._render = render_study
        rng = np.random.default_rng(findings_seed)
        self.findings = [random_findings(rng) for _ in range(count)]
        self.size, self.seed_base = size, seed_base
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.findings)

    def image(self, index: int) -> np.ndarray:
        if index not in self._cache:
            study = self._render(self.findings[index], seed=self.seed_base + index, size=self.size)
            self._cache[index] = np.asarray(study.image, dtype=np.float32)
        return self._cache[index]

    def describe(self) -> str:
        return f"phantoms seeds {self.seed_base}..{self.seed_base + len(self) - 1} at {self.size}px"


def random_square_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square covering 50-100 % of the shorter edge, resized (bicubic, antialiased) to size x size."""
    height, width = image.shape
    edge = max(1, int(round(min(height, width) * rng.uniform(0.5, 1.0))))
    top = int(rng.integers(0, height - edge + 1))
    left = int(rng.integers(0, width - edge + 1))
    window = np.ascontiguousarray(image[top : top + edge, left : left + edge], dtype=np.float32)
    if edge == size:
        return window
    resized = Image.fromarray(window, mode="F").resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square, resized to size x size: the deterministic view used for evaluation."""
    height, width = image.shape
    edge = min(height, width)
    top, left = (height - edge) // 2, (width - edge) // 2
    window = np.ascontiguousarray(image[top : top + edge, left : left + edge], dtype=np.float32)
    if edge == size:
        return window
    resized = Image.fromarray(window, mode="F").resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def centre_squares(source: ImageSource, size: int, count: int | None = None) -> np.ndarray:
    """(N, size, size): :func:`centre_square` of the first ``count`` images of ``source`` (default: all)."""
    count = len(source) if count is None else min(count, len(source))
    return np.stack([centre_square(source.image(i), size) for i in range(count)])


class TrainingBatches:
    """Endless seeded batches (B, 1, size, size) of random crops from a source."""

    def __init__(self, source: ImageSource, *, size: int, batch: int, rng: np.random.Generator) -> None:
        if size < 16 or batch < 1:
            raise InputError(f"training needs size >= 16 and batch >= 1, got size={size}, batch={batch}")
        self.source, self.size, self.batch, self.rng = source, size, batch, rng

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        indices = self.rng.integers(0, len(self.source), size=self.batch)
        crops = [random_square_crop(self.source.image(int(i)), self.size, self.rng) for i in indices]
        return torch.from_numpy(np.stack(crops)[:, None])
