"""HiDDeN watermark encoder and extractor for k-bit keys on greyscale images (MedSign section 2.1).

The encoder exists only to pre-train the extractor and is then thrown away; the extractor is what every later
stage and every verification relies on. Three design choices were MEASURED on this project's 2-core CPU
(64x64 crops of phantoms, batch 16, AdamW 1e-3, strength 0.3, no attack; ``benchmarks/extractor_design.py``,
figures in BENCHMARKS.md):

* The extractor reads any image size: 3x3 convolutions, global average pooling (GAP), ``Linear(k, k)``. It is
  fast on CPU because an auditor scans whole archives: it downsamples twice with strided 3x3 convolutions (a
  3x3 kernel at stride 2 still sees every pixel) and does its deep work at a quarter of the resolution (about
  0.9 GMAC at 256x256, against about 19 GMAC for Stable Signature's eight full-resolution 64-channel layers).
* BatchNorm in the extractor. A GAP read-out carries the key in each image's MEAN activation per channel.
  GroupNorm normalises every image's channel groups to zero mean, erasing exactly that signal: with GroupNorm
  the pair stayed at 0.52-0.54 bit accuracy (1,900 steps at strength 0.1, 800 at 0.3), with no normalisation
  at 0.50 after 1,500 steps, with BatchNorm it reached 0.60-0.72 after 1,000-2,000 steps. BatchNorm's one
  weakness here (one attack per training batch makes batch statistics attack-specific) is handled after
  training by re-estimating the running statistics over a mixture of attacks at the working resolution
  (``train_extractor.recalibrate_batchnorm``).
* The key enters the encoder as a bank of learned spatial patterns, one per bit, tiled over the image: the
  residual is ``tanh(sum_i (2 m_i - 1) P_i / sqrt(k))``. HiDDeN's original injection (the key as constant
  feature channels, mixed with image features by one convolution) learned markedly slower here (0.60 against
  0.69 bit accuracy after 1,000 steps, both with BatchNorm). Patterns are initialised smooth (low-pass noise)
  so that JPEG and resampling do not erase them before training has begun.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from medsign_forensics.config import DEFAULT_KEY_BITS, SUPPORTED_KEY_BITS
from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError
from medsign_forensics.imageio import BT601_LUMA


@dataclass(frozen=True)
class HiddenConfig:
    """Architecture of the encoder/extractor pair; saved beside the weights so they can be rebuilt exactly."""

    bits: int = DEFAULT_KEY_BITS
    extractor_stem_channels: int = 32
    extractor_channels: int = 64
    extractor_blocks: int = 4
    encoder_tile: int = 16  # period in pixels of the encoder's tiled key patterns
    # Pre-training only: the encoder is discarded and no image quality is asked of it (Stable Signature's
    # pre-training runs near 25 dB PSNR); a strong residual gives the extractor a learnable signal early.
    strength: float = 0.3

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_KEY_BITS:
            raise InputError(f"key length {self.bits} is not supported; use one of {SUPPORTED_KEY_BITS}")
        if min(self.extractor_stem_channels, self.extractor_channels) < 1 or self.extractor_blocks < 1:
            raise InputError("the extractor needs at least one block and one channel per layer")
        if not 4 <= self.encoder_tile <= 128:
            raise InputError(f"encoder_tile {self.encoder_tile} must lie in 4..128 pixels")
        if not 0 < self.strength <= 1:
            raise InputError(f"watermark strength {self.strength} must lie in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HiddenConfig:
        return config_from_dict(cls, data)


def rgb_to_grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma; (B, 1, H, W) passes through unchanged."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"expected images of shape (B, 1, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(BT601_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


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
        c1, c2 = config.extractor_stem_channels, config.extractor_channels
        layers = [_bn_block(1, c1, stride=2), _bn_block(c1, c1), _bn_block(c1, c2, stride=2)]
        layers += [_bn_block(c2, c2) for _ in range(config.extractor_blocks)]
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

    ``delta`` is the key's signed sum of learned ``encoder_tile`` x ``encoder_tile`` patterns, tiled over the
    image from its top-left corner (see the module docstring for why this injection was chosen).
    """

    def __init__(self, config: HiddenConfig) -> None:
        super().__init__()
        self.config = config
        tile, coarse = config.encoder_tile, max(1, config.encoder_tile // 4)
        generator = torch.Generator().manual_seed(0)
        smooth = F.interpolate(torch.randn(config.bits, 1, coarse, coarse, generator=generator),
                               size=(tile, tile), mode="bilinear", align_corners=False)
        smooth = smooth / smooth.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None, None]
        self.patterns = nn.Parameter(smooth.reshape(config.bits, tile * tile))

    def forward(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.clamp(images + self.config.strength * self.residual(images, keys), 0.0, 1.0)

    def residual(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The unscaled watermark pattern delta in [-1, 1], at the image's size."""
        _check_images(images)
        if keys.ndim != 2 or keys.shape != (images.shape[0], self.config.bits):
            raise InputError(f"expected keys of shape ({images.shape[0]}, {self.config.bits}), got {tuple(keys.shape)}")
        tile = self.config.encoder_tile
        signs = 2.0 * keys.to(self.patterns.dtype) - 1.0
        pattern = (signs @ self.patterns / self.config.bits**0.5).view(-1, 1, tile, tile)
        height, width = images.shape[2:]
        tiled = pattern.repeat(1, 1, -(-height // tile), -(-width // tile))[:, :, :height, :width]
        return torch.tanh(tiled)
