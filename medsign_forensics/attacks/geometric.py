"""Attacks that move or resample pixels: crops, resizing, rotation."""

from __future__ import annotations

import math
from abc import abstractmethod
from enum import Enum

import kornia
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from medsign_forensics.attacks.base import Attack, number_name
from medsign_forensics.errors import InputError


class Measure(str, Enum):
    """What a crop or resize fraction is a fraction of."""

    AREA = "area"
    EDGE = "edge"

    def edge_factor(self, fraction: float) -> float:
        return math.sqrt(fraction) if self is Measure.AREA else fraction


def _edge_size(size: int, edge_factor: float) -> int:
    return max(1, int(round(size * edge_factor)))


class _Crop(Attack):
    """Keep a window of ``fraction`` of the area or edge; the output is smaller (no resize back)."""

    position = ""

    def __init__(self, fraction: float, measure: Measure) -> None:
        if not 0 < fraction <= 1:
            raise InputError(f"crop fraction {fraction} must lie in (0, 1]")
        self.fraction = fraction
        self.measure = Measure(measure)

    @property
    def name(self) -> str:
        return f"crop_{self.position}_{self.measure.value}{number_name(self.fraction)}"

    def window(self, height: int, width: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the kept window."""
        edge = self.measure.edge_factor(self.fraction)
        h, w = _edge_size(height, edge), _edge_size(width, edge)
        top, left = self._offsets(height - h, width - w, rng)
        return top, left, h, w

    @abstractmethod
    def _offsets(self, spare_h: int, spare_w: int, rng: np.random.Generator | None) -> tuple[int, int]: ...

    def _exact(self, image, rng):
        height, width = image.shape
        top, left, h, w = self.window(height, width, rng)
        return image[top : top + h, left : left + w].copy()

    def _differentiable(self, images, rng):
        top, left, h, w = self.window(images.shape[2], images.shape[3], rng)
        return images[:, :, top : top + h, left : left + w]


class CenterCrop(_Crop):
    position = "center"

    def _offsets(self, spare_h, spare_w, rng):
        return spare_h // 2, spare_w // 2


class RandomCrop(_Crop):
    """Window at a uniformly random position (one position per call, shared by the whole batch)."""

    position = "random"
    random = True

    def _offsets(self, spare_h, spare_w, rng):
        assert rng is not None
        return int(rng.integers(0, spare_h + 1)), int(rng.integers(0, spare_w + 1))


class Resize(Attack):
    """Resample to ``fraction`` of the area or edge with bicubic interpolation (antialiased when shrinking)."""

    def __init__(self, fraction: float, measure: Measure) -> None:
        if not 0 < fraction <= 4:
            raise InputError(f"resize fraction {fraction} must lie in (0, 4]")
        self.fraction = fraction
        self.measure = Measure(measure)

    @property
    def name(self) -> str:
        return f"resize_{self.measure.value}{number_name(self.fraction)}"

    def size(self, height: int, width: int) -> tuple[int, int]:
        edge = self.measure.edge_factor(self.fraction)
        return _edge_size(height, edge), _edge_size(width, edge)

    def _exact(self, image, rng):
        h, w = self.size(*image.shape)
        resized = Image.fromarray(image, mode="F").resize((w, h), resample=Image.Resampling.BICUBIC)
        return np.clip(np.asarray(resized), 0.0, 1.0)

    def _differentiable(self, images, rng):
        h, w = self.size(images.shape[2], images.shape[3])
        out = F.interpolate(images, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return torch.clamp(out, 0.0, 1.0)


class Rotate(Attack):
    """Rotate counter-clockwise by ``degrees`` about the centre, keep the size, fill the corners with black."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    @property
    def name(self) -> str:
        return f"rotate_{number_name(self.degrees)}"

    def _exact(self, image, rng):
        rotated = Image.fromarray(image, mode="F").rotate(
            self.degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=0.0
        )
        return np.clip(np.asarray(rotated), 0.0, 1.0)

    def _differentiable(self, images, rng):
        angle = images.new_full((images.shape[0],), float(self.degrees))
        return kornia.geometry.transform.rotate(images, angle, mode="bilinear", padding_mode="zeros")
