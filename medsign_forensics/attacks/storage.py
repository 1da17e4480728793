"""Attacks that storing or exporting an image performs: JPEG, requantisation, greyscale export, a DICOM
display window. Their exact forms round through :mod:`medsign_forensics.attacks.codec`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from medsign_forensics.attacks.base import Attack, number_name, straight_through
from medsign_forensics.attacks.codec import jpeg_round_trip, levels, quantise, to_uint8
from medsign_forensics.errors import InputError
from medsign_forensics.imageio import BT601_LUMA


class Jpeg(Attack):
    """Encode and decode with Pillow's (libjpeg) JPEG codec at ``quality``; 8-bit like every JPEG file."""

    def __init__(self, quality: int) -> None:
        if not 1 <= quality <= 95 or int(quality) != quality:
            raise InputError(f"JPEG quality {quality} must be an integer in 1..95")
        self.quality = int(quality)

    @property
    def name(self) -> str:
        return f"jpeg_q{self.quality}"

    def _exact(self, image, rng):
        return jpeg_round_trip(image, self.quality).astype(np.float32) / 255.0

    def _differentiable(self, images, rng):
        # Real codec in the forward pass, identity gradient (Stable Signature's straight-through JPEG).
        with torch.no_grad():
            pixels = to_uint8(images.detach().cpu().permute(0, 2, 3, 1).numpy())
            decoded = [jpeg_round_trip(p[..., 0] if p.shape[-1] == 1 else p, self.quality) for p in pixels]
            stacked = np.stack([d[..., None] if d.ndim == 2 else d for d in decoded])
            coded = torch.from_numpy(stacked.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        return straight_through(images, coded.to(images.device, images.dtype))


class Greyscale(Attack):
    """Convert to 8-bit grey with BT.601 luma, as an RGB-to-greyscale export does.

    A greyscale image is first replicated into three 8-bit channels, so for it this is an 8-bit requantisation.
    The exact form also accepts an (H, W, 3) RGB image.
    """

    @property
    def name(self) -> str:
        return "grey"

    def exact(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3 and image.shape[2] == 3:
            return self._exact(image, rng)
        return super().exact(image, rng)

    def _exact(self, image, rng):
        rgb = to_uint8(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
        return np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"), dtype=np.float32) / 255.0

    def _differentiable(self, images, rng):
        if images.shape[1] == 3:
            luma = (images * images.new_tensor(BT601_LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        else:
            luma = images
        return Requantize(8).differentiable(luma)


class Requantize(Attack):
    """Round to ``bits``-bit integers and back: what storing in an 8-bit PNG or a 12-bit DICOM does."""

    def __init__(self, bits: int) -> None:
        if bits not in (8, 12, 16):
            raise InputError(f"requantisation depth {bits} must be 8, 12 or 16 bits")
        self.bits = bits
        self.levels = float(2**bits - 1)

    @property
    def name(self) -> str:
        return f"requant_{self.bits}bit"

    def _exact(self, image, rng):
        return quantise(image, self.bits)

    def _differentiable(self, images, rng):
        return straight_through(images, torch.round(torch.clamp(images, 0, 1) * self.levels) / self.levels)


class DicomWindow(Attack):
    """Store as 12-bit DICOM, view through a display window, export the 8-bit screen image.

    Precisely, for an image x in [0, 1]:

    1. stored value s = round(4095 x)  (BitsStored 12, no rescale);
    2. DICOM linear VOI LUT (PS3.3 C.11.2.1.2.1) with Window Center c and Window Width w (in stored units)
       to an 8-bit display value d:
       d = 0 if s <= c - 0.5 - (w - 1)/2;  d = 255 if s > c - 0.5 + (w - 1)/2;
       else d = round(((s - (c - 0.5)) / (w - 1) + 0.5) * 255);
    3. result d / 255.

    ``dicomwl_c2048_w4096`` (the full range) is a 12-bit then 8-bit requantisation; narrower windows also clip
    the tails, as exporting what a radiologist saw on screen does.
    """

    STORED_BITS = 12
    STORED_MAX = 2**STORED_BITS - 1

    def __init__(self, center: float, width: float) -> None:
        if width < 2:
            raise InputError(f"window width {width} must be at least 2 stored units")
        self.center = center
        self.width = width

    @property
    def name(self) -> str:
        return f"dicomwl_c{number_name(self.center)}_w{number_name(self.width)}"

    def _exact(self, image, rng):
        stored = levels(image, self.STORED_BITS)
        linear = ((stored - (self.center - 0.5)) / (self.width - 1) + 0.5) * 255.0
        low = stored <= self.center - 0.5 - (self.width - 1) / 2
        high = stored > self.center - 0.5 + (self.width - 1) / 2
        display = np.where(low, 0.0, np.where(high, 255.0, np.rint(np.clip(linear, 0.0, 255.0))))
        return (display / 255.0).astype(np.float32)

    def _differentiable(self, images, rng):
        scaled = images * self.STORED_MAX
        stored = straight_through(scaled, torch.round(torch.clamp(scaled, 0, self.STORED_MAX)))
        linear = torch.clamp(((stored - (self.center - 0.5)) / (self.width - 1) + 0.5) * 255.0, 0.0, 255.0)
        display = straight_through(linear, torch.round(linear))
        return display / 255.0
