"""Fixtures: small synthetic images for watermark tests (no phantom renderer or real data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medsign_forensics.evaluate import synthetic


def chest_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """The synthetic radiograph of :func:`medsign_forensics.evaluate.synthetic.chest_like`, as float in [0, 1]."""
    return synthetic.chest_like(size, seed).astype(np.float32) / 255.0


def write_folder(folder: Path, count: int = 6, size: int = 96) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.rint(chest_like(size, seed=i) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


import pytest  # noqa: E402


@pytest.fixture
def chest() -> np.ndarray:
    return chest_like(256, seed=3)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "images")


@pytest.fixture
def make_folder(tmp_path: Path):
    """Factory: ``make_folder(name, count, size)`` writes ``count`` synthetic PNGs into tmp_path/name."""
    return lambda name, count, size: write_folder(tmp_path / name, count=count, size=size)
