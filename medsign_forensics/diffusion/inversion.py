"""DDIM inversion: from an image back to an estimate of the initial noise z_T that generated it.

The latent layer (:mod:`medsign_forensics.watermark.latent`) reads its key from z_T, so verification runs the
generation backwards: the VAE encoder's posterior mean, scaled like the pipeline's latents, then deterministic
DDIM steps from t = 0 up to t = T with the U-Net conditioned on the EMPTY prompt (the verifier does not know
the report) and no guidance. A small model inverts imperfectly, which is why the key is replicated many times.

Preparing a suspect image (size, geometry, levels) is the reader's job:
:mod:`medsign_forensics.watermark.latent_reader`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler

from medsign_forensics.errors import InputError


def _model_input(model: Any, pixels: np.ndarray) -> torch.Tensor:
    """(H, W) grey in [0, 1] -> (1, C_img, S, S) in [-1, 1] at the model's native size."""
    if pixels.ndim != 2:
        raise InputError(f"inversion takes one grey image (H, W), got shape {pixels.shape}")
    size = model.image_size
    image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    image = image.clamp(0, 1) * 2 - 1
    return image.repeat(1, model.image_channels, 1, 1)


def empty_prompt_embedding(model: Any) -> torch.Tensor:
    """The text encoder's embedding of "" (what inversion conditions on)."""
    with torch.no_grad():
        embeds, _ = model.pipeline.encode_prompt("", model.device, 1, False)
    return embeds


def invert(model: Any, pixels: np.ndarray | Sequence[np.ndarray], *, steps: int,
           embedding: torch.Tensor | None = None) -> torch.Tensor:
    """Estimate z_T (B, C, h, w) float32 of grey images (H, W) in [0, 1] (one, or a list inverted as one batch,
    which costs far less per image on a CPU) with ``steps`` DDIM steps."""
    if steps < 1:
        raise InputError(f"inversion needs at least 1 step, got {steps}")
    images = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
    if not images:
        raise InputError("give at least one image to invert")
    scheduler = DDIMInverseScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(steps, device=model.device)
    embedding = empty_prompt_embedding(model) if embedding is None else embedding
    parameter = next(model.unet.parameters())
    with torch.no_grad():
        batch = torch.cat([_model_input(model, image) for image in images]).to(device=model.device,
                                                                                 dtype=parameter.dtype)
        latents = model.vae.encode(batch).latent_dist.mean * model.vae.config.scaling_factor
        context = embedding.expand(len(images), *embedding.shape[1:])
        for t in scheduler.timesteps:
            prediction = model.unet(latents, t, encoder_hidden_states=context).sample
            latents = scheduler.step(prediction, t, latents).prev_sample
    return latents.float().cpu()
