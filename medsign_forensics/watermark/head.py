"""The watermark layer of a CPU deployment: D_w = head o D_o, the base decoder followed by a keyed spectral mark
whose spatial gain and per-frequency amplitudes stage 2 learns with MedSign's objective.

Why a layer after the decoder rather than fine-tuning every decoder weight (MedSign section 2.2.2): the
spectral extractor (:mod:`.spectral`) reads the power of lattice frequencies that repeat every 64 pixels
across the whole image. A convolutional decoder has no absolute position, so it cannot make a phase-coherent
pattern at those frequencies over 256 pixels; and full-decoder fine-tuning on this project's 2-core CPU
stalled at 0.67 bit accuracy even against the learned extractor (BENCHMARKS.md). The layer keeps what the
paper's stage 2 is for: the key is written by the decoder for every image it decodes, the image loss and
total variation shape where the residual goes, and the preservation loss, weighted by the localization map
A_loc during training, teaches the gain network to keep the residual out of the pathology at generation time,
when no map exists. Training needs only the original images I_o from the cache (no decoder backward pass), so
a run takes minutes.

The layer: ``gain = exp(g * tanh(net(I_o) / g))`` from a small dilated CNN at quarter resolution (zero-initialised
output, so training starts from gain 1), times the informed spectral mark of :func:`.spectral.embed`, rescaled
per image to the PSNR budget. The budget is a fixed per-image RMS, so PSNR against D_o is what the config says
(before 8-bit storage), whatever the gain learns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError
from medsign_forensics.watermark.binding import REFINEMENTS, Binding, bound_phases
from medsign_forensics.watermark.hidden import rgb_to_grey
from medsign_forensics.watermark.spectral import SpectralConfig, embed, on_frequencies


@dataclass(frozen=True)
class HeadConfig:
    """The watermark layer's shape and budget; saved in deployment.json."""

    psnr: float = 43.0  # dB of the residual against D_o's image, before clipping and 8-bit storage
    channels: int = 16
    pool: int = 4  # the gain network works at 1/pool resolution: lesions are tens of pixels wide
    max_log_gain: float = 1.5  # gain stays within exp(+-1.5)

    def __post_init__(self) -> None:
        if not 30.0 <= self.psnr <= 60.0:
            raise InputError(f"the watermark budget {self.psnr} dB must lie in 30..60 dB")
        if self.channels < 1 or self.pool < 1 or self.max_log_gain <= 0:
            raise InputError("the watermark layer needs channels >= 1, pool >= 1 and max_log_gain > 0")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        return config_from_dict(cls, data)


class WatermarkHead(nn.Module):
    """Adds the key's spectral mark to (B, 1, H, W) images in [0, 1]; H and W multiples of the tile."""

    def __init__(self, *, spectral: SpectralConfig, key: np.ndarray, config: HeadConfig | None = None,
                 binding: Binding | None = None) -> None:
        super().__init__()
        self.spectral = spectral
        #: The deployment's content binding (:mod:`.binding`): registry material, not a trained tensor.
        self.binding = binding
        self.config = config or HeadConfig()
        self.key = np.asarray(key, dtype=np.uint8).ravel().copy()
        n_frequencies = len(on_frequencies(spectral, self.key)[0])
        c = self.config.channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.SiLU(),
            nn.Conv2d(c, 1, 3, padding=1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.log_amplitudes = nn.Parameter(torch.zeros(n_frequencies))

    def gain(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, H, W) spatial gain in exp(+-max_log_gain)."""
        pooled = F.avg_pool2d(images, self.config.pool) if self.config.pool > 1 else images
        logits = self.net(pooled * 2 - 1)
        if self.config.pool > 1:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        g = self.config.max_log_gain
        return torch.exp(g * torch.tanh(logits[:, 0] / g))

    def bound_phases(self, images: torch.Tensor, gain: torch.Tensor) -> torch.Tensor | None:
        """(B, n) bound phases of the mark on (B, 1, H, W) images (refined on the marked image, see
        :data:`.binding.REFINEMENTS`), or None without a binding (informed phases)."""
        if self.binding is None:
            return None
        binding = self.binding
        pixels = images[:, 0].detach().double().cpu().numpy()

        def phases(marked: np.ndarray | None) -> torch.Tensor:
            return torch.from_numpy(np.stack([
                bound_phases(p, self.key, self.spectral, binding, partners_from=None if marked is None else m)
                for p, m in zip(pixels, pixels if marked is None else marked)]))

        with torch.no_grad():
            current = phases(None)
            for _ in range(REFINEMENTS):
                marked = embed(images[:, 0].detach(), self.key, self.spectral, psnr=self.config.psnr,
                               gain=gain.detach(), log_amplitudes=self.log_amplitudes.detach(), phases=current)
                current = phases(marked.double().cpu().numpy())
        return current

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise InputError(f"the watermark layer takes greyscale (B, 1, H, W) images, got {tuple(images.shape)}")
        gain = self.gain(images)
        marked = embed(images[:, 0], self.key, self.spectral, psnr=self.config.psnr, gain=gain,
                       log_amplitudes=self.log_amplitudes, phases=self.bound_phases(images, gain))
        return marked[:, None]


class WatermarkedDecoder(nn.Module):
    """A diffusers VAE decoder followed by the watermark layer; output in the decoder's [-1, 1] convention.

    Colour decoders (RGB SD-1.x models) get the mark on their BT.601 luma, added equally to every channel
    (the weights sum to one, so the luma carries it unchanged), because a medical image is stored as grey.
    """

    def __init__(self, decoder: nn.Module, head: WatermarkHead) -> None:
        super().__init__()
        self.decoder = decoder
        self.head = head

    def forward(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.decoder(z, *args, **kwargs)
        image = rgb_to_grey((out.float().clamp(-1, 1) + 1) / 2)  # the project's one conversion: BT.601 luma
        residual = self.head(image) - image
        return out + (2 * residual).to(out.dtype)


def attach(vae: nn.Module, head: WatermarkHead) -> nn.Module:
    """Put ``head`` after ``vae``'s decoder in place (an AutoencoderKL); returns ``vae``."""
    decoder = vae.decoder
    if isinstance(decoder, WatermarkedDecoder):
        raise InputError("this VAE already carries a watermark layer")
    assert isinstance(decoder, nn.Module)
    vae.decoder = WatermarkedDecoder(decoder, head)
    return vae
