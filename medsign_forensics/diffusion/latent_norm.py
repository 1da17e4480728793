"""Per-channel latent standardisation folded into the VAE's weights.

An SD-1.x pipeline scales latents by one global ``scaling_factor``. A VAE trained here with 8 latent channels
came out uneven (per-channel standard deviations 0.16 to 1.31 and means up to +-1.1 after the global scaling),
so the diffusion prior's N(0, I) fits some channels badly. Standardising each channel inside the VAE keeps the
folder a plain ``AutoencoderKL`` that ``StableDiffusionPipeline`` samples correctly: the encoder's
``quant_conv`` emits (mean - m_c) / s_c and log-variance - 2 log s_c, and the decoder's ``post_quant_conv``
first multiplies by s_c and adds m_c back, so decode(encode(x)) is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from medsign_forensics.errors import ModelError


def channel_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each channel of (N, C, h, w) latent samples."""
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()
    mean, std = flat.mean(dim=1), flat.std(dim=1)
    if not torch.isfinite(std).all() or (std <= 0).any():
        raise ModelError(f"the trained VAE gives latent channels with standard deviations {std.tolist()}")
    return mean, std


@torch.no_grad()
def fold_channel_norm(vae: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rewrite ``vae``'s 1x1 quant convolutions in place so its latents are (z - mean) / std per channel."""
    quant, post = vae.quant_conv, vae.post_quant_conv
    if quant is None or post is None:
        raise ModelError("per-channel latent normalisation needs a VAE with quant_conv and post_quant_conv")
    channels = mean.numel()
    weight, bias = quant.weight.double(), quant.bias.double()
    scale = 1.0 / std
    weight[:channels] *= scale[:, None, None, None]
    bias[:channels] = (bias[:channels] - mean) * scale
    bias[channels:] += 2.0 * torch.log(scale)
    quant.weight.copy_(weight)
    quant.bias.copy_(bias)
    post_weight = post.weight.double()
    post.bias.copy_(post.bias.double() + post_weight[:, :, 0, 0] @ mean)
    post.weight.copy_(post_weight * std[None, :, None, None])
