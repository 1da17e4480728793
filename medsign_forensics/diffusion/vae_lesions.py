"""Stage A's lesion phase: the VAE keeps small lesions and invents none (``vae_train.lesions``).

Why: a plain L1/SSIM/spectrum loss spends the VAE's capacity on anatomy, which covers the image; a 3 mm granuloma
is a few dozen pixels of 65,536 and vanished from every reconstruction of the 4-channel VAE (recall 0 against the
shipped classifier), so no U-Net trained on its latents could draw one. The phase continues stage A with two
terms, each weighted ``lesions.weight``:

- **lesion**: the mean absolute error inside the lesions, each connected lesion weighted as a whole (a pixel counts
  1/area of its lesion), so a 5-pixel granuloma counts as much as a consolidation; crops are centred on a random
  lesion ``lesions.centred`` of the time;
- **peaks**: per 8 x 8 cell, the largest error more than 4 pixels from any lesion, averaged; a made-up dot is a
  local error peak, so inventing a finding costs what missing one does (without it, the lesion term alone made
  the VAE draw findings into 34 % of normal phantoms' reconstructions).

The masks are the phantom renderer's exact lesions at full size, one bit plane per finding kind
(:class:`LesionCache`), grown by two pixels so the lesion's rim counts as lesion. Every random draw comes from
the run's generator, so the phase resumes exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation, label

from medsign_forensics.diffusion.data import RenderCache, StudySource, to_tensor
from medsign_forensics.diffusion.layout import KINDS
from medsign_forensics.reports.findings import FindingKind

LESION_TASK = "rendering full-size lesion masks"
_RIM = 2  # pixels the lesion masks are grown by
_CLEARANCE = 4  # pixels from a lesion beyond which an error peak counts as made up
_CELL = 8  # side of the cells whose largest error is a peak
assert len(KINDS) <= 16, "one bit per finding kind in a uint16 lesion map"


class LesionCache(RenderCache):
    """Per render, uint16 (size, size): bit i set where a lesion of kind ``KINDS[i]`` (grown by the rim) is.

    Kinds stay apart so that a granuloma inside an emphysematous lung (whose mask is the whole lung) is still a
    lesion of its own."""

    stem = "lesions"
    what = "lesion mask cache"
    dtype = np.uint16

    def settings(self) -> dict[str, object]:
        return {"size": self.size, "rim": _RIM, "kinds": [kind.value for kind in KINDS]}

    def draw(self, source: StudySource, index: int, seed: int) -> np.ndarray:
        masks = source.masks(index, seed=seed, size=self.size, grid=self.size)  # type: ignore[attr-defined]
        return lesion_bits(masks, self.size)


def lesion_bits(masks: Mapping[FindingKind, np.ndarray], size: int) -> np.ndarray:
    """A row of :class:`LesionCache` (size, size) from full-size masks per finding kind
    (:func:`~medsign_forensics.diffusion.data.kind_masks` with ``grid`` = ``size``; none for a normal study)."""
    bits = np.zeros((size, size), np.uint16)
    for kind, mask in masks.items():
        bits |= binary_dilation(mask > 0, iterations=_RIM).astype(np.uint16) << KINDS.index(kind)
    return bits


def lesion_weights(bits: np.ndarray) -> np.ndarray:
    """Per pixel of a lesion bit map (:class:`LesionCache`), 1 / the area of its connected lesion of one kind
    (the largest such weight where kinds overlap; 0 outside every lesion): a small lesion counts as a whole."""
    return _weights(_labelled(bits))


Labelled = list[tuple[np.ndarray, int]]


def _labelled(bits: np.ndarray) -> Labelled:
    """Per finding kind, its connected lesions: the label image and their count."""
    return [label((bits >> plane) & 1) for plane in range(len(KINDS))]


def _weights(planes: Labelled) -> np.ndarray:
    weights = np.zeros(planes[0][0].shape, np.float32)
    for labels, count in planes:
        if count:
            areas = np.bincount(labels.ravel())
            areas[0] = 1
            weights = np.maximum(weights, np.where(labels > 0, 1.0 / areas[labels], 0.0))
    return weights


def _lesions(planes: Labelled) -> list[np.ndarray]:
    """The pixel coordinates (n, 2) of every connected lesion of every kind."""
    return [np.argwhere(labels == i) for labels, count in planes for i in range(1, count + 1)]


class LesionCrops:
    """Batches of the lesion phase: image crops and the per-pixel lesion weights of each crop."""

    def __init__(self, images: np.ndarray, lesions: np.ndarray, *, crop: int, centred: float) -> None:
        self.images = images
        self.lesions = lesions
        self.crop = crop
        self.centred = centred
        self.with_lesions = np.flatnonzero(lesions.reshape(len(lesions), -1).max(axis=1) > 0)

    def batch(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` crops (B, 1, crop, crop) in [0, 1] and their weights (B, 1, crop, crop)."""
        size, crop = self.images.shape[-1], self.crop
        crops, weights = [], []
        for draw in torch.rand(count, generator=generator).tolist():
            if draw < self.centred and len(self.with_lesions):
                row = int(self.with_lesions[_below(len(self.with_lesions), generator)])
                planes = _labelled(self.lesions[row])
                lesions = _lesions(planes)
                pixels = lesions[_below(len(lesions), generator)]
                cy, cx = pixels[_below(len(pixels), generator)]
                dy, dx = torch.randint(-(crop // 4), crop // 4 + 1, (2,), generator=generator).tolist()
                y, x = int(cy) - crop // 2 + dy, int(cx) - crop // 2 + dx
            else:
                row = _below(len(self.images), generator)
                planes = _labelled(self.lesions[row])
                y, x = torch.randint(0, size - crop + 1, (2,), generator=generator).tolist()
            y, x = min(max(y, 0), size - crop), min(max(x, 0), size - crop)
            crops.append(self.images[row, y : y + crop, x : x + crop])
            weights.append(_weights(planes)[y : y + crop, x : x + crop])
        return to_tensor(np.stack(crops)), torch.from_numpy(np.stack(weights)).unsqueeze(1)


def lesion_terms(error: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lesion and peaks terms (module docstring) of an absolute error (B, C, H, W) and weights (B, 1, H, W)."""
    lesion = (error * weights).sum() / (weights.sum() * error.shape[1]).clamp(min=1)
    near = F.max_pool2d((weights > 0).float(), 2 * _CLEARANCE + 1, stride=1, padding=_CLEARANCE)
    peaks = F.max_pool2d(error * (1 - near), _CELL).mean()
    return lesion, peaks


def _below(bound: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, bound, (1,), generator=generator))
