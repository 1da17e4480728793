"""One library of named, parametrised attacks, shared by training and evaluation.

Every attack has two forms that speak of the same transformation under the same name:

* :meth:`Attack.exact` works on a numpy image (float32, (H, W) in [0, 1]; ``grey`` also takes (H, W, 3)) with
  the real tools: Pillow's JPEG codec and resamplers, OpenCV's Gaussian blur, integer rounding. Evaluation
  uses it.
* :meth:`Attack.differentiable` works on a torch batch (B, C, H, W) and passes gradients, straight-through
  (``x + (f(x) - x).detach()``) where the real operation has none (JPEG, rounding). Training uses it.

Names carry their parameters, and fractions say what they are a fraction of: ``crop_center_area0.5`` keeps
half of the AREA (edge factor sqrt(0.5) = 0.707), ``crop_center_edge0.5`` keeps half of each EDGE (a quarter
of the area). Grammar (numbers in plain decimal notation)::

    none | brightness_x<f> | contrast_x<f> | gamma_<g> | rotate_<degrees> | jpeg_q<1..95>
    crop_center_area<f> | crop_center_edge<f> | crop_random_area<f> | crop_random_edge<f>
    resize_area<f> | resize_edge<f> | blur_sigma<s>_k<odd> | noise_sigma<s> | grey
    requant_8bit | requant_12bit | dicomwl_c<centre>_w<width>
    <name>+<name>+...   (a composition, applied left to right)

Randomness (random crop position, noise) comes from a ``numpy.random.Generator`` passed by the caller to
either form, so that the two forms given equally seeded generators produce the same crop and the same noise.
"""

from __future__ import annotations

import io
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from enum import Enum
from functools import lru_cache

import cv2
import kornia
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from medsign_forensics.errors import InputError
from medsign_forensics.fileio import to_uint8
from medsign_forensics.imageio import BT601_LUMA


class Measure(str, Enum):
    """What a crop or resize fraction is a fraction of."""

    AREA = "area"
    EDGE = "edge"

    def edge_factor(self, fraction: float) -> float:
        return math.sqrt(fraction) if self is Measure.AREA else fraction


def _num(value: float) -> str:
    """Canonical plain-decimal spelling of a parameter (no exponent, so '+' stays the composition sign)."""
    return np.format_float_positional(float(value), trim="-")


def _straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward value ``y``, gradient of the identity: for operations with no useful gradient."""
    return x + (y - x).detach()


def _check_numpy(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"attacks take a greyscale (H, W) float image, got shape {image.shape}")
    return image


def _check_torch(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise InputError(f"attacks take a (B, C, H, W) batch, got shape {tuple(images.shape)}")


def _edge_size(size: int, edge_factor: float) -> int:
    return max(1, int(round(size * edge_factor)))


class Attack(ABC):
    """A named image transformation with an exact and a differentiable form."""

    random: bool = False

    @property
    @abstractmethod
    def name(self) -> str:
        """Canonical name; ``parse_attack(attack.name)`` rebuilds an equal attack."""

    @abstractmethod
    def _exact(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray: ...

    @abstractmethod
    def _differentiable(self, images: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor: ...

    def exact(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply the real operation to a float32 (H, W) image in [0, 1]; returns float32 in [0, 1]."""
        self._need_rng(rng)
        return np.asarray(self._exact(_check_numpy(image), rng), dtype=np.float32)

    def differentiable(self, images: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Apply the training form to a (B, C, H, W) batch in [0, 1], passing gradients."""
        _check_torch(images)
        self._need_rng(rng)
        return self._differentiable(images, rng)

    def _need_rng(self, rng: np.random.Generator | None) -> None:
        if self.random and rng is None:
            raise InputError(f"attack {self.name} is random: pass a seeded numpy Generator as rng")

    def __repr__(self) -> str:
        return f"Attack({self.name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attack) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Identity(Attack):
    @property
    def name(self) -> str:
        return "none"

    def _exact(self, image, rng):
        return image.copy()

    def _differentiable(self, images, rng):
        return images


class Brightness(Attack):
    """Multiply every pixel by ``factor`` and clip to [0, 1] (torchvision's and Pillow's brightness)."""

    def __init__(self, factor: float) -> None:
        if factor <= 0:
            raise InputError(f"brightness factor {factor} must be positive")
        self.factor = factor

    @property
    def name(self) -> str:
        return f"brightness_x{_num(self.factor)}"

    def _exact(self, image, rng):
        return np.clip(image * self.factor, 0.0, 1.0)

    def _differentiable(self, images, rng):
        return torch.clamp(images * self.factor, 0.0, 1.0)


class Contrast(Attack):
    """Scale each image's deviation from its own mean by ``factor`` and clip to [0, 1]."""

    def __init__(self, factor: float) -> None:
        if factor < 0:
            raise InputError(f"contrast factor {factor} must not be negative")
        self.factor = factor

    @property
    def name(self) -> str:
        return f"contrast_x{_num(self.factor)}"

    def _exact(self, image, rng):
        mean = float(image.mean())
        return np.clip(mean + self.factor * (image - mean), 0.0, 1.0)

    def _differentiable(self, images, rng):
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return torch.clamp(mean + self.factor * (images - mean), 0.0, 1.0)


class Gamma(Attack):
    """Raise every pixel to the power ``gamma`` (values below 1 brighten, above 1 darken)."""

    def __init__(self, gamma: float) -> None:
        if gamma <= 0:
            raise InputError(f"gamma {gamma} must be positive")
        self.gamma = gamma

    @property
    def name(self) -> str:
        return f"gamma_{_num(self.gamma)}"

    def _exact(self, image, rng):
        return np.power(np.clip(image, 0.0, 1.0), self.gamma)

    def _differentiable(self, images, rng):
        # The floor keeps the gradient of x**gamma finite at 0 for gamma < 1.
        return torch.clamp(images, 1e-4, 1.0) ** self.gamma


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
        return f"crop_{self.position}_{self.measure.value}{_num(self.fraction)}"

    def window(self, height: int, width: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the kept window."""
        edge = self.measure.edge_factor(self.fraction)
        h, w = _edge_size(height, edge), _edge_size(width, edge)
        top, left = self._offsets(height - h, width - w, rng)
        return top, left, h, w

    @abstractmethod
    def _offsets(self, spare_h: int, spare_w: int, rng: np.random.Generator | None) -> tuple[int, int]: ...

    def _exact(self, image, rng):
        top, left, h, w = self.window(*image.shape, rng)
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
        return f"resize_{self.measure.value}{_num(self.fraction)}"

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
        return f"rotate_{_num(self.degrees)}"

    def _exact(self, image, rng):
        rotated = Image.fromarray(image, mode="F").rotate(
            self.degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=0.0
        )
        return np.clip(np.asarray(rotated), 0.0, 1.0)

    def _differentiable(self, images, rng):
        angle = images.new_full((images.shape[0],), float(self.degrees))
        return kornia.geometry.transform.rotate(images, angle, mode="bilinear", padding_mode="zeros")


def _jpeg_uint8(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert(decoded.mode))


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
        return _jpeg_uint8(to_uint8(image), self.quality).astype(np.float32) / 255.0

    def _differentiable(self, images, rng):
        # Real codec in the forward pass, identity gradient (Stable Signature's straight-through JPEG).
        with torch.no_grad():
            pixels = to_uint8(images.detach().cpu().permute(0, 2, 3, 1).numpy())
            decoded = [_jpeg_uint8(p[..., 0] if p.shape[-1] == 1 else p, self.quality) for p in pixels]
            stacked = np.stack([d[..., None] if d.ndim == 2 else d for d in decoded])
            coded = torch.from_numpy(stacked.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        return _straight_through(images, coded.to(images.device, images.dtype))


class GaussianBlur(Attack):
    """Gaussian blur with standard deviation ``sigma`` and a ``kernel`` x ``kernel`` window, mirrored borders."""

    def __init__(self, sigma: float, kernel: int) -> None:
        if sigma <= 0 or kernel < 3 or kernel % 2 == 0:
            raise InputError(f"blur needs sigma > 0 and an odd kernel >= 3, got sigma={sigma}, kernel={kernel}")
        self.sigma = sigma
        self.kernel = int(kernel)

    @property
    def name(self) -> str:
        return f"blur_sigma{_num(self.sigma)}_k{self.kernel}"

    def _exact(self, image, rng):
        k = self.kernel
        return cv2.GaussianBlur(image, (k, k), self.sigma, borderType=cv2.BORDER_REFLECT_101)

    def _differentiable(self, images, rng):
        k, s = self.kernel, float(self.sigma)
        return kornia.filters.gaussian_blur2d(images, (k, k), (s, s), border_type="reflect")


class GaussianNoise(Attack):
    """Add independent N(0, sigma^2) noise to every pixel and clip to [0, 1]."""

    random = True

    def __init__(self, sigma: float) -> None:
        if sigma < 0:
            raise InputError(f"noise sigma {sigma} must not be negative")
        self.sigma = sigma

    @property
    def name(self) -> str:
        return f"noise_sigma{_num(self.sigma)}"

    def _exact(self, image, rng):
        assert rng is not None
        return np.clip(image + rng.normal(0.0, self.sigma, size=image.shape), 0.0, 1.0)

    def _differentiable(self, images, rng):
        assert rng is not None
        noise = torch.from_numpy(rng.normal(0.0, self.sigma, size=tuple(images.shape)).astype(np.float32))
        return torch.clamp(images + noise.to(images.device, images.dtype), 0.0, 1.0)


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
        return _straight_through(luma, torch.round(torch.clamp(luma, 0, 1) * 255.0) / 255.0)


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
        return np.rint(np.clip(image, 0.0, 1.0).astype(np.float64) * self.levels).astype(np.float32) / self.levels

    def _differentiable(self, images, rng):
        return _straight_through(images, torch.round(torch.clamp(images, 0, 1) * self.levels) / self.levels)


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

    STORED_MAX = 4095

    def __init__(self, center: float, width: float) -> None:
        if width < 2:
            raise InputError(f"window width {width} must be at least 2 stored units")
        self.center = center
        self.width = width

    @property
    def name(self) -> str:
        return f"dicomwl_c{_num(self.center)}_w{_num(self.width)}"

    def _exact(self, image, rng):
        stored = np.rint(np.clip(image, 0.0, 1.0).astype(np.float64) * self.STORED_MAX)
        linear = ((stored - (self.center - 0.5)) / (self.width - 1) + 0.5) * 255.0
        low = stored <= self.center - 0.5 - (self.width - 1) / 2
        high = stored > self.center - 0.5 + (self.width - 1) / 2
        display = np.where(low, 0.0, np.where(high, 255.0, np.rint(np.clip(linear, 0.0, 255.0))))
        return (display / 255.0).astype(np.float32)

    def _differentiable(self, images, rng):
        scaled = images * self.STORED_MAX
        stored = _straight_through(scaled, torch.round(torch.clamp(scaled, 0, self.STORED_MAX)))
        linear = torch.clamp(((stored - (self.center - 0.5)) / (self.width - 1) + 0.5) * 255.0, 0.0, 255.0)
        display = _straight_through(linear, torch.round(linear))
        return display / 255.0


class Compose(Attack):
    """Apply several attacks in order; the name joins theirs with '+'."""

    def __init__(self, attacks: Sequence[Attack]) -> None:
        flat: list[Attack] = []
        for attack in attacks:
            flat.extend(attack.attacks if isinstance(attack, Compose) else [attack])
        if len(flat) < 2:
            raise InputError("a composition needs at least two attacks")
        self.attacks = tuple(flat)
        self.random = any(a.random for a in flat)

    @property
    def name(self) -> str:
        return "+".join(a.name for a in self.attacks)

    def _exact(self, image, rng):
        for attack in self.attacks:
            image = attack.exact(image, rng)
        return image

    def _differentiable(self, images, rng):
        for attack in self.attacks:
            images = attack.differentiable(images, rng)
        return images


_NUMBER = r"([-+]?\d+(?:\.\d+)?)"
_PATTERNS: list[tuple[re.Pattern[str], Callable[..., Attack]]] = [
    (re.compile(r"none"), lambda: Identity()),
    (re.compile(rf"brightness_x{_NUMBER}"), lambda f: Brightness(float(f))),
    (re.compile(rf"contrast_x{_NUMBER}"), lambda f: Contrast(float(f))),
    (re.compile(rf"gamma_{_NUMBER}"), lambda g: Gamma(float(g))),
    (re.compile(rf"crop_center_(area|edge){_NUMBER}"), lambda m, f: CenterCrop(float(f), Measure(m))),
    (re.compile(rf"crop_random_(area|edge){_NUMBER}"), lambda m, f: RandomCrop(float(f), Measure(m))),
    (re.compile(rf"resize_(area|edge){_NUMBER}"), lambda m, f: Resize(float(f), Measure(m))),
    (re.compile(rf"rotate_{_NUMBER}"), lambda d: Rotate(float(d))),
    (re.compile(r"jpeg_q(\d+)"), lambda q: Jpeg(int(q))),
    (re.compile(rf"blur_sigma{_NUMBER}_k(\d+)"), lambda s, k: GaussianBlur(float(s), int(k))),
    (re.compile(rf"noise_sigma{_NUMBER}"), lambda s: GaussianNoise(float(s))),
    (re.compile(r"grey"), lambda: Greyscale()),
    (re.compile(r"requant_(\d+)bit"), lambda b: Requantize(int(b))),
    (re.compile(rf"dicomwl_c{_NUMBER}_w{_NUMBER}"), lambda c, w: DicomWindow(float(c), float(w))),
]

ATTACK_GRAMMAR = (
    "none, brightness_x<f>, contrast_x<f>, gamma_<g>, crop_center_area<f>, crop_center_edge<f>, "
    "crop_random_area<f>, crop_random_edge<f>, resize_area<f>, resize_edge<f>, rotate_<degrees>, jpeg_q<q>, "
    "blur_sigma<s>_k<odd>, noise_sigma<s>, grey, requant_8bit, requant_12bit, dicomwl_c<centre>_w<width>, "
    "and compositions joined by '+'"
)


def parse_attack(name: str) -> Attack:
    """Build the attack a name describes; ``parse_attack(a.name) == a`` for every attack."""
    text = name.strip()
    if "+" in text:
        return Compose([parse_attack(part) for part in text.split("+")])
    for pattern, build in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return build(*match.groups())
    raise InputError(f"unknown attack {name!r}; attack names are: {ATTACK_GRAMMAR}")


@lru_cache(maxsize=256)
def get_attack(name: str) -> Attack:
    """Cached :func:`parse_attack` (attacks are immutable)."""
    return parse_attack(name)


def parse_attack_list(text: str) -> tuple[Attack, ...]:
    """Comma-separated names -> attacks (the CLI's ``--attacks a,b,c``)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError("the attack list is empty; give comma-separated names such as none,jpeg_q50")
    return tuple(get_attack(n) for n in names)


# MedSign Table 1. "50% center crop" follows Stable Signature (which MedSign builds on): half of the AREA is kept
# (edge factor 0.707). "70% scaling" resizes each edge to 0.7 of its length. Rotation fills corners with black.
TABLE1_ATTACKS: tuple[Attack, ...] = tuple(
    get_attack(n) for n in ("none", "brightness_x2", "crop_center_area0.5", "jpeg_q50", "rotate_25", "resize_edge0.7")
)
