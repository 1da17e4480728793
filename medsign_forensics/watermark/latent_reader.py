"""From a suspect image to the inverted noise the latent layer reads, undoing ordinary handling first.

Inversion (:func:`medsign_forensics.diffusion.inversion.invert`) only recovers z_T when the image sits on the
model's pixel grid at the model's intensity levels. What verification does before inverting, and why:

- Size. An image larger than the model's native size is resized to it (an up-scaled export). A smaller one is
  taken to be a centre crop and placed, unscaled, at the centre of a native-size canvas, which puts a centre
  crop back exactly where it was; the latent positions the crop does not cover are left out of the vote.
- Geometry. When the decoder layer's synchronisation found a rotation and scale (``geometry``), they are undone
  first; the corners that rotation filled are left out of the vote too.
- Levels. Clipped pixels (a brightness change saturates them) do not vote, and an affine map sends the image's
  1st and 50th percentiles to the model's reference levels: clipping keeps the rank of the clipped pixels, so
  both percentiles survive a brightness gain that clips less than half the image, and a global gain or
  offset is undone.

Leaving positions out never biases the statistics: which positions vote does not depend on the keystream, so
each bit stays a fair coin for an unmarked image (the module docstring of :mod:`.latent`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsign_forensics.diffusion.inversion import empty_prompt_embedding, invert
from medsign_forensics.errors import InputError

# 1st and 50th percentile grey levels of mini-cxr's own samples (benchmarks/latent_layer.py --levels).
REFERENCE_LEVELS = (0.18, 0.53)
# A pixel within half a grey level of black or white counts as clipped.
_CLIP = 0.5 / 255
# A latent position votes when at least this share of its pixel footprint is valid.
MIN_VALID_SHARE = 0.75


@dataclass(frozen=True)
class PreparedImage:
    """A native-size grey image ready for inversion and the valid-pixel mask that goes with it."""

    pixels: np.ndarray
    valid: np.ndarray
    notes: tuple[str, ...]


def prepare(pixels: np.ndarray, *, native: int, geometry: tuple[float, float] | None = None,
            reference: tuple[float, float] | None = None) -> PreparedImage:
    """Bring (H, W) grey pixels in [0, 1] to the model's native grid and levels (see the module docstring)."""
    reference = REFERENCE_LEVELS if reference is None else reference
    image = np.asarray(pixels, dtype=np.float32)
    notes: list[str] = []
    inside = np.ones(image.shape, dtype=bool)  # pixels that belong to the image (not padding or rotated-in fill)
    if geometry is not None and (abs(geometry[0]) > 0.5 or abs(geometry[1] - 1) > 0.01):
        rotation, scale = geometry
        image, inside = _undo_geometry(image, inside, rotation, scale)
        notes.append(f"latent layer: undid rotation {rotation:.1f} deg and scale {scale:.3f} found by the "
                     "decoder layer's pilots")
    height, width = image.shape
    if height >= native and width >= native:
        if (height, width) != (native, native):
            notes.append(f"latent layer: {width}x{height} resized to {native}x{native}")
        image = _resize(image, native, native)
        inside = _resize(inside.astype(np.float32), native, native) > 0.5
    else:
        image, inside = _centre(image, inside, native)
        notes.append(f"latent layer: {width}x{height} placed at the centre of {native}x{native} (a centre crop)")
    valid = inside & (image > _CLIP) & (image < 1 - _CLIP)
    if valid.mean() < 0.1:
        raise InputError("fewer than 10 % of the pixels are usable for the latent layer (clipped or outside)")
    # Percentiles over every pixel of the image, clipped ones included: clipping moves values past the end of
    # the range but keeps their rank, so the 1st and 50th percentiles survive a brightness gain that clips
    # less than half of the image.
    low, mid = np.percentile(image[inside], (1, 50))
    if mid - low > 1e-3:
        image = (image - low) / (mid - low) * (reference[1] - reference[0]) + reference[0]
    image = np.where(valid, np.clip(image, 0.0, 1.0), reference[1]).astype(np.float32)
    return PreparedImage(pixels=image, valid=valid, notes=tuple(notes))


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
        (width, height), resample=Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32)


def _centre(image: np.ndarray, valid: np.ndarray, native: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape
    if height > native or width > native:  # one side larger: resize that side down first, keeping aspect
        factor = native / max(height, width)
        height, width = max(1, round(height * factor)), max(1, round(width * factor))
        valid = _resize(valid.astype(np.float32), height, width) > 0.5
        image = _resize(image, height, width)
    canvas = np.zeros((native, native), dtype=np.float32)
    mask = np.zeros((native, native), dtype=bool)
    top, left = (native - height) // 2, (native - width) // 2
    canvas[top:top + height, left:left + width] = image
    mask[top:top + height, left:left + width] = valid
    return canvas, mask


def _undo_geometry(image: np.ndarray, valid: np.ndarray, rotation: float,
                   scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Undo what the pilots found: ``rotation`` is the counter-clockwise turn (degrees) that brings the image
    back, ``scale`` the factor by which it was resized."""
    height, width = image.shape
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    out = Image.fromarray(image, mode="F").rotate(rotation, resample=Image.Resampling.BILINEAR, fillcolor=0.0)
    inside = Image.fromarray(valid.astype(np.float32), mode="F").rotate(
        rotation, resample=Image.Resampling.BILINEAR, fillcolor=0.0)
    if size != (width, height):
        out = out.resize(size, resample=Image.Resampling.BICUBIC)
        inside = inside.resize(size, resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32), np.asarray(inside, dtype=np.float32) > 0.5


def latent_mask(valid: np.ndarray, factor: int) -> np.ndarray:
    """Which latent positions (h, w) vote: those whose factor x factor pixel footprint is mostly valid."""
    share = F.avg_pool2d(torch.from_numpy(valid.astype(np.float32))[None, None], factor)[0, 0].numpy()
    return share >= MIN_VALID_SHARE


class LatentReader:
    """Inverts images with one diffusion model: the part of latent-layer verification shared by every key."""

    def __init__(self, model: Any, *, steps: int) -> None:
        if steps < 1:
            raise InputError(f"inversion needs at least 1 step, got {steps}")
        self.model = model
        self.steps = steps
        self.embedding = empty_prompt_embedding(model)

    @property
    def weights_sha256(self) -> str:
        return str(self.model.weights_sha256)

    def noise(self, pixels: np.ndarray, *,
              geometry: tuple[float, float] | None = None) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...]]:
        """The inverted z_T (C, h, w), the (h, w) mask of positions that vote, and notes for the report
        (InputError when too little of the image is usable)."""
        return self._invert([prepare(pixels, native=self.model.image_size, geometry=geometry)])[0]

    def noise_batch(self, images: list[np.ndarray], geometries: list[tuple[float, float] | None]
                    ) -> list[tuple[torch.Tensor, np.ndarray, tuple[str, ...]] | None]:
        """:meth:`noise` for several images inverted as one batch (several times cheaper per image on a CPU);
        None in place of an image that cannot be read."""
        prepared: list[PreparedImage | None] = []
        for image, geometry in zip(images, geometries):
            try:
                prepared.append(prepare(image, native=self.model.image_size, geometry=geometry))
            except InputError:
                prepared.append(None)
        readable = [p for p in prepared if p is not None]
        results = iter(self._invert(readable) if readable else [])
        return [None if p is None else next(results) for p in prepared]

    def _invert(self, prepared: list[PreparedImage]) -> list[tuple[torch.Tensor, np.ndarray, tuple[str, ...]]]:
        z = invert(self.model, [p.pixels for p in prepared], steps=self.steps, embedding=self.embedding)
        factor = int(self.model.vae_scale_factor)
        return [(z[i], latent_mask(p.valid, factor), p.notes) for i, p in enumerate(prepared)]
