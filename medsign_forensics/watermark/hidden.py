"""HiDDeN watermark encoder and extractor for k-bit keys on greyscale images (MedSign section 2.1).

The encoder exists only to pre-train the extractor and is then thrown away; the extractor is what every later
stage and every verification relies on, so its design is driven by two needs:

* It reads any image size: convolutions, then global average pooling, then ``Linear(k, k)``.
* It is fast on a 2-core CPU, because an auditor scans whole archives. Stable Signature's extractor runs eight
  64-channel 3x3 convolutions at full resolution (about 19 GMAC for a 256x256 image). Ours downsamples twice
  with strided 3x3 convolutions first (a 3x3 kernel at stride 2 still sees every pixel, so the highest
  frequencies are not discarded), and does its deep work at a quarter of the resolution (about 0.9 GMAC).

GroupNorm rather than BatchNorm in the extractor: one attack is applied per training batch, so batch
statistics differ wildly between batches (brightness x2 versus JPEG) and BatchNorm's running averages would not
describe any of them at evaluation time — the classic HiDDeN "train accuracy high, test accuracy low" gap.
GroupNorm normalises per image, so training and evaluation compute the same function.

BatchNorm in the encoder: it only ever sees clean images (attacks come after it), so its running statistics
are sound; and the key enters as per-image constant channels, which GroupNorm (a per-image normalisation)
would largely subtract again, while BatchNorm keeps their differences between images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medsign_forensics.config import DEFAULT_KEY_BITS, SUPPORTED_KEY_BITS
from medsign_forensics.errors import InputError

# ITU-R BT.601 luma weights (R, G, B): the project's one RGB-to-grey conversion.
BT601_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class HiddenConfig:
    """Architecture of the encoder/extractor pair; saved beside the weights so they can be rebuilt exactly."""

    bits: int = DEFAULT_KEY_BITS
    extractor_stem_channels: int = 32
    extractor_channels: int = 64
    extractor_blocks: int = 4
    encoder_channels: int = 32
    encoder_blocks: int = 3
    strength: float = 0.1
    groups: int = 8  # GroupNorm groups in the extractor

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_KEY_BITS:
            raise InputError(f"key length {self.bits} is not supported; use one of {SUPPORTED_KEY_BITS}")
        for name in ("extractor_stem_channels", "extractor_channels"):
            if getattr(self, name) % self.groups:
                raise InputError(f"{name}={getattr(self, name)} must be a multiple of groups={self.groups}")
        if self.extractor_blocks < 1 or self.encoder_blocks < 1:
            raise InputError("the encoder and extractor need at least one block each")
        if not 0 < self.strength <= 1:
            raise InputError(f"watermark strength {self.strength} must lie in (0, 1]")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> HiddenConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown HiDDeN config fields {sorted(unknown)}; this file is from another version")
        return cls(**data)  # type: ignore[arg-type]


def rgb_to_grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma; (B, 1, H, W) passes through unchanged."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"expected images of shape (B, 1, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(BT601_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _conv_block(c_in: int, c_out: int, groups: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


def _bn_block(c_in: int, c_out: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 1:
        raise InputError(
            f"expected greyscale images of shape (B, 1, H, W), got {tuple(images.shape)}; "
            "convert RGB with rgb_to_grey first"
        )


class HiddenExtractor(nn.Module):
    """Greyscale image of any size -> k logits (positive means bit 1).

    An optional PCA whitening layer (:mod:`medsign_forensics.watermark.whitening`) is appended after fitting;
    :meth:`forward` applies it, :meth:`raw_logits` does not (pre-whitening evaluation and stage-1 training).
    """

    def __init__(self, config: HiddenConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, g = config.extractor_stem_channels, config.extractor_channels, config.groups
        layers = [_conv_block(1, c1, g, stride=2), _conv_block(c1, c1, g), _conv_block(c1, c2, g, stride=2)]
        layers += [_conv_block(c2, c2, g) for _ in range(config.extractor_blocks)]
        self.features = nn.Sequential(*layers)
        self.to_bits = nn.Conv2d(c2, config.bits, 1)
        self.head = nn.Linear(config.bits, config.bits)
        self.whitening: nn.Linear | None = None

    @property
    def whitened(self) -> bool:
        return self.whitening is not None

    def attach_whitening(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Append the fitted whitening ``y = weight @ x + bias`` (replacing any earlier one)."""
        k = self.config.bits
        if tuple(weight.shape) != (k, k) or tuple(bias.shape) != (k,):
            raise InputError(f"whitening must be ({k}, {k}) weight and ({k},) bias, got {tuple(weight.shape)}")
        layer = nn.Linear(k, k)
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.dtype))
            layer.bias.copy_(bias.to(layer.bias.dtype))
        self.whitening = layer.to(self.head.weight.device)

    def add_empty_whitening(self) -> None:
        """Create the whitening layer's parameters so that a whitened state dict loads with strict keys."""
        self.whitening = nn.Linear(self.config.bits, self.config.bits).to(self.head.weight.device)

    def raw_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits before whitening: what the HiDDeN encoder was trained against."""
        _check_images(images)
        pooled = self.to_bits(self.features(images)).mean(dim=(2, 3))
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.raw_logits(images)
        return logits if self.whitening is None else self.whitening(logits)


class HiddenEncoder(nn.Module):
    """(image, key) -> watermarked image ``clamp(image + strength * delta, 0, 1)``; used only in pre-training.

    The residual is computed at half resolution and upsampled bilinearly: half the cost on CPU, and a
    band-limited pattern that JPEG and resampling destroy less readily than pixel-level noise.
    """

    def __init__(self, config: HiddenConfig) -> None:
        super().__init__()
        self.config = config
        c, g = config.encoder_channels, config.groups
        self.features = nn.Sequential(
            _bn_block(1, c, stride=2), *[_bn_block(c, c) for _ in range(config.encoder_blocks - 1)]
        )
        self.mix = _bn_block(c + config.bits + 1, c)
        self.to_delta = nn.Conv2d(c, 1, 1)

    def forward(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.clamp(images + self.config.strength * self.residual(images, keys), 0.0, 1.0)

    def residual(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The unscaled watermark pattern delta in [-1, 1], at the image's size."""
        _check_images(images)
        if keys.ndim != 2 or keys.shape != (images.shape[0], self.config.bits):
            raise InputError(f"expected keys of shape ({images.shape[0]}, {self.config.bits}), got {tuple(keys.shape)}")
        feats = self.features(images)
        signs = (2.0 * keys.to(feats.dtype) - 1.0)[:, :, None, None].expand(-1, -1, *feats.shape[2:])
        small = F.interpolate(images, size=feats.shape[2:], mode="bilinear", align_corners=False, antialias=True)
        delta = torch.tanh(self.to_delta(self.mix(torch.cat([feats, signs, small], dim=1))))
        return F.interpolate(delta, size=images.shape[2:], mode="bilinear", align_corners=False)
