"""Fixtures: small synthetic images for watermark tests (no phantom renderer or real data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def chest_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A phantom-like greyscale radiograph: bright body, two dark lungs, a spine, smooth texture, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.55 + 0.15 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        body = np.where(lung, 0.2 + 0.05 * np.sin(40 * xx + 25 * yy + rng.uniform(0, 6)), body)
    body = body + 0.25 * np.exp(-((xx - 0.5) ** 2) / 0.002)
    return np.clip(body + rng.normal(0, 0.02, body.shape), 0, 1).astype(np.float32)


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
