"""Sample images and their final latents x0 from a loaded model, and decode x0 with any VAE decoder.

x0 is defined here, once, for the whole toolkit: the final denoised latents exactly as the VAE decoder
receives them, i.e. the scheduler's last output already divided by ``vae.config.scaling_factor``. So
``decode(model, result.latents)`` reproduces ``result.images``, and a watermarked decoder D_w given the same
x0 produces the watermarked version of the same image.

Each image has its own seed and its own CPU random generator, so an image depends only on (model, prompt,
seed, settings), never on the batch it was sampled in or on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from medsign_forensics.diffusion.layout import LayoutGuidance, guided_shares, layout_conditioning
from medsign_forensics.diffusion.loader import DiffusionModel
from medsign_forensics.errors import InputError

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.0


class SampleOutput(str, Enum):
    """What :func:`sample` returns: decoded images, latents x0, or both (latents alone skip the decoder)."""

    IMAGES = "images"
    LATENTS = "latents"
    BOTH = "both"


@dataclass(frozen=True)
class SampleResult:
    """Images (B, C, H, W) float32 in [0, 1] on CPU, C = the model's image channels; latents x0
    (B, 4, H/8, W/8) float32 on CPU (see the module docstring); either is None when not requested."""

    images: torch.Tensor | None
    latents: torch.Tensor | None
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    negative_prompt: str | None
    height: int
    width: int
    scheduler: str
    layout_guidance: str = LayoutGuidance.OFF.value  # the policy applied; "off" too when no layout was given


def sample(
    model: DiffusionModel,
    prompts: Sequence[str],
    *,
    seed: int | Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    output: SampleOutput | str = SampleOutput.BOTH,
    latents: torch.Tensor | None = None,
    layout: torch.Tensor | None = None,
    layout_guidance: LayoutGuidance | str = LayoutGuidance.EMPTY,
) -> SampleResult:
    """Generate one image per prompt with DPM-Solver++ and classifier-free guidance.

    ``seed`` is one seed per prompt, or one integer ``s`` meaning seeds ``s, s+1, ...``. ``guidance_scale``
    <= 1 turns guidance off. ``callback_on_step_end`` is passed to the diffusers pipeline unchanged
    (``fn(pipeline, step_index, timestep, callback_kwargs) -> callback_kwargs``), so callers can act per
    timestep, e.g. while an attention-capturing processor is installed on the U-Net. ``latents`` (B, C, h, w)
    replaces the seeded initial noise z_T (the latent layer's watermarked noise); the seeds are then recorded
    only, since the solver used here is deterministic. ``layout`` (B, kinds, grid, grid), one per prompt, feeds
    the model's layout adapter (:func:`~medsign_forensics.diffusion.layout.report_layout`); None samples from
    the text alone. ``layout_guidance`` says whose layout is left out of the unconditional half, so that
    guidance amplifies it too (:class:`~medsign_forensics.diffusion.layout.LayoutGuidance`: by default only
    empty layouts, i.e. reports asserting no finding; ``off`` is diffusers' adapter pipeline).
    """
    prompts = list(prompts)
    if not prompts:
        raise InputError("give at least one prompt to sample")
    seeds = image_seeds(seed, len(prompts))
    output = SampleOutput(output)
    if layout_guidance not in {policy.value for policy in LayoutGuidance}:
        raise InputError(f"unknown layout guidance {layout_guidance!r}; use off, empty or all")
    policy = LayoutGuidance(layout_guidance)
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    height = height or model.image_size
    width = width or model.image_size
    factor = model.vae_scale_factor
    if height % factor or width % factor:
        raise InputError(f"height and width must be multiples of {factor} for this model, got {height}x{width}")
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
    conditioning: AbstractContextManager[None] = nullcontext()
    if layout is not None:
        if model.adapter is None:
            raise InputError(f"the model {model.name} has no layout adapter, so it cannot be given a layout")
        if layout.ndim != 4 or layout.shape[0] != len(prompts):
            raise InputError(f"give one layout (kinds, grid, grid) per prompt, got shape {tuple(layout.shape)}")
        conditioning = layout_conditioning(model.unet, model.adapter, layout, guided=guided_shares(layout, policy))
    with torch.no_grad(), conditioning:
        result = model.pipeline(
            prompt=prompts,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generators,
            latents=latents,
            output_type="latent",
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=list(callback_on_step_end_tensor_inputs),
            return_dict=True,
        )
        latents = result.images / model.vae.config.scaling_factor
        images = decode(model, latents) if output is not SampleOutput.LATENTS else None
    return SampleResult(
        images=None if images is None else images.float().cpu(),
        latents=None if output is SampleOutput.IMAGES else latents.float().cpu(),
        prompts=tuple(prompts),
        seeds=tuple(seeds),
        steps=steps,
        guidance_scale=float(guidance_scale),
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        scheduler=type(model.scheduler).__name__,
        layout_guidance=(policy if layout is not None else LayoutGuidance.OFF).value,
    )


def decode(model: DiffusionModel, latents: torch.Tensor, vae: Any | None = None) -> torch.Tensor:
    """Turn latents x0 into images (B, C, H, W) float32 in [0, 1] on the decoder's device.

    ``vae`` (an AutoencoderKL, e.g. a watermarked decoder D_w) replaces the model's own. Gradients flow when
    the caller has them enabled, so a decoder can be trained through this function.
    """
    decoder = model.vae if vae is None else vae
    parameter = next(decoder.parameters())
    if latents.ndim != 4 or latents.shape[1] != decoder.config.latent_channels:
        raise InputError(
            f"latents must have shape (B, {decoder.config.latent_channels}, h, w), got {tuple(latents.shape)}"
        )
    decoded = decoder.decode(latents.to(device=parameter.device, dtype=parameter.dtype)).sample
    return (decoded.float() / 2 + 0.5).clamp(0, 1)


def image_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """The seed of each of ``count`` images: ``seed`` as a list, or ``seed, seed+1, ...`` for one integer."""
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise InputError(f"give one seed per prompt: {count} prompt(s) but {len(seeds)} seed(s)")
    return seeds
