"""Localization maps for an EXISTING image and its report, the way DAAM and OVAM evaluate on real images.

The image is encoded with the VAE (the posterior mean, so the latent is deterministic), noised to each chosen
training timestep with seeded Gaussian noise (x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, the schedule the U-Net was
trained on), and denoised for ONE step conditioned on the report alone (no guidance) while the cross-attention is
captured. The sums over the chosen timesteps then go through the same maps as during generation. This is what
makes ground-truth evaluation possible: a rendered phantom has exact lesion masks.

The image is resized (aspect kept) so that its longer side is the model's native resolution, each side rounded to
a multiple of the VAE's downsampling factor; the maps are upsampled straight back to the original image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from medsign_forensics.errors import InputError
from medsign_forensics.localization.capture import CapturedAttention, CrossAttentionCapture
from medsign_forensics.localization.maps import Localization, MapOptions, localize_captured
from medsign_forensics.reports.words import MedicalWord, ParseFn, WordTokens, medical_words, word_tokens

DEFAULT_TIMESTEPS = (50, 100, 200)
"""Low noise levels: the report still steers the denoiser, while the anatomy and lesions of the image fix the
layout the attention has to follow. On mini-cxr 0.2.0 they point better than (200, 400, 600): pointing game
CAS+AAS 0.616 against 0.576 over 151 held-out findings (BENCHMARKS.md, fifth session)."""


def working_size(pipe: Any, image_size: tuple[int, int]) -> tuple[int, int]:
    """The size the image is encoded at: longer side = the model's native resolution, multiples of the VAE factor."""
    factor = int(pipe.vae_scale_factor)
    native = int(pipe.unet.config.sample_size) * factor
    height, width = image_size
    scale = native / max(height, width)
    return (
        max(factor, round(height * scale / factor) * factor),
        max(factor, round(width * scale / factor) * factor),
    )


@torch.no_grad()
def encode_image(pipe: Any, image: np.ndarray) -> torch.Tensor:
    """The VAE posterior mean of a greyscale (H, W) image in [0, 1], scaled as the U-Net expects."""
    vae = pipe.vae
    size = working_size(pipe, image.shape)
    pixels = torch.as_tensor(image, dtype=torch.float32)[None, None]
    if tuple(pixels.shape[-2:]) != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    pixels = pixels.clamp(0, 1).repeat(1, int(vae.config.in_channels), 1, 1) * 2 - 1
    latent = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latent - shift) * vae.config.scaling_factor


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 1:
        raise InputError(f"expected a greyscale image of shape (H, W), got an array of shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating) or image.min() < 0 or image.max() > 1:
        raise InputError("expected a float image with values in [0, 1]; convert it before localising")
    return image.astype(np.float32)


@dataclass(frozen=True)
class ImageAttention:
    """What one inversion captured: the attention sums (None when the report has no medical word), the words
    that reached the model, the words truncated away, and the original image size the maps are made at."""

    captured: CapturedAttention | None
    words: tuple[WordTokens, ...]
    dropped: tuple[MedicalWord, ...]
    image_size: tuple[int, int]

    def localize(
        self, options: MapOptions = MapOptions(), *, words: Sequence[WordTokens] | None = None
    ) -> Localization:
        """A_loc from this capture; ``words`` restricts it to some of the words (e.g. those of one finding kind)."""
        chosen = self.words if words is None else tuple(words)
        return localize_captured(
            self.captured if chosen else None, chosen, self.image_size, dropped=self.dropped, options=options
        )


@torch.no_grad()
def capture_image(
    pipe: Any,
    image: np.ndarray,
    report: str,
    *,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    parse: ParseFn | None = None,
    locations: bool = True,
) -> ImageAttention:
    """Noise the image's latent to each timestep, denoise one step conditioned on ``report``, capture attention.

    ``pipe`` is a diffusers StableDiffusionPipeline (``DiffusionModel.pipe``). The U-Net is not run at all when
    the report has no medical word.
    """
    image = _check_image(image)
    if not report.strip():
        raise InputError("the report is empty; give the report text the image should be localised against")
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    limit = int(scheduler.config.num_train_timesteps)
    if not timesteps or any(not 0 <= int(t) < limit for t in timesteps):
        raise InputError(f"timesteps must be a non-empty list of integers in [0, {limit}), got {list(timesteps)}")
    words, dropped = word_tokens(pipe.tokenizer, report, medical_words(report, parse=parse, locations=locations))
    size = (int(image.shape[0]), int(image.shape[1]))
    if not words:
        return ImageAttention(None, (), tuple(dropped), size)

    latent = encode_image(pipe, image)
    device = latent.device
    embeddings, _ = pipe.encode_prompt(report, device, 1, False)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with CrossAttentionCapture(pipe.unet, conditional_batch=1) as capture:
        for t in timesteps:
            noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(device, latent.dtype)
            step = torch.tensor([int(t)], device=device)
            noisy = scheduler.add_noise(latent, noise, step)
            pipe.unet(noisy, step, encoder_hidden_states=embeddings.to(pipe.unet.dtype))
    return ImageAttention(capture.result(), tuple(words), tuple(dropped), size)


def localize_image(
    pipe: Any,
    image: np.ndarray,
    report: str,
    *,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    options: MapOptions = MapOptions(),
    parse: ParseFn | None = None,
    locations: bool = True,
) -> Localization:
    """A_loc, at the image's own size, for ``image`` described by ``report`` (all zeros for a normal report)."""
    attention = capture_image(pipe, image, report, timesteps=timesteps, seed=seed, parse=parse, locations=locations)
    return attention.localize(options)
