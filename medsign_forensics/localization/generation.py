"""Localization maps DURING generation: the capture runs while the model samples each image from its report.

This is how decoder fine-tuning gets its training pairs (x0, A_loc): one sampling run gives the latents x0 the
decoder will receive and, from the same U-Net calls, the attention behind each report's map. Under
classifier-free guidance only the conditional half of each U-Net batch is read (see :mod:`capture`). When no
report in the batch has a medical word the capture is not installed at all, so normal batches cost nothing extra.
Several map variants (the ablations' options) can be built from the one capture, as the decoder cache does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from medsign_forensics.diffusion import DiffusionModel, sample
from medsign_forensics.diffusion.conditioning import Conditioning, condition
from medsign_forensics.diffusion.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, SampleOutput, SampleResult
from medsign_forensics.localization.capture import CrossAttentionCapture, StepSelector, every_step
from medsign_forensics.localization.maps import Localization, MapOptions, localize_variants
from medsign_forensics.reports.words import ParseFn, medical_words, word_tokens


@dataclass(frozen=True)
class GeneratedMaps:
    """The sampled images and x0 (``sample.images``, ``sample.latents``) and one Localization per report;
    ``variants`` holds them for every MapOptions asked for (``localizations`` are the first's)."""

    sample: SampleResult
    localizations: tuple[Localization, ...]
    variants: Mapping[MapOptions, tuple[Localization, ...]]

    @property
    def maps(self) -> torch.Tensor:
        """All A_loc maps as one (B, 1, H, W) float32 tensor, ready to weight a per-pixel loss."""
        return torch.stack([torch.from_numpy(item.a_loc) for item in self.localizations])[:, None]


def generate_with_maps(
    model: DiffusionModel,
    reports: Sequence[str],
    *,
    seed: int | Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    negative_prompt: str | None = None,
    select: StepSelector = every_step,
    options: MapOptions | Sequence[MapOptions] = MapOptions(),
    parse: ParseFn | None = None,
    locations: bool = True,
    output: SampleOutput | str = SampleOutput.BOTH,
) -> GeneratedMaps:
    """Sample one image per report and build each report's A_loc from the same denoising run. Each report is
    given to the model as :func:`~medsign_forensics.diffusion.conditioning.condition` says (for the shipped
    mini-cxr: as written).

    ``select`` chooses the denoising steps whose attention is summed (default: all, as in the paper).
    ``options`` may list several MapOptions: every variant is built from the one capture. ``output`` as in
    :func:`~medsign_forensics.diffusion.sampling.sample` (latents alone skip the decoder).
    """
    given = condition(model, list(reports), seed)
    variants = (options,) if isinstance(options, MapOptions) else tuple(options)
    if not variants:
        raise ValueError("give at least one MapOptions")
    words = [  # the words are read where the model reads them: in its prompt
        word_tokens(model.tokenizer, prompt, medical_words(prompt, parse=parse, locations=locations))
        for prompt in given.prompts
    ]
    captured = None
    if any(found for found, _ in words):
        with CrossAttentionCapture(model.unet, conditional_batch=len(given.prompts), select=select) as capture:
            result = _sample(model, given, seed, steps, guidance_scale, negative_prompt, output)
        captured = capture.result()
    else:
        result = _sample(model, given, seed, steps, guidance_scale, negative_prompt, output)
    size = (result.height, result.width)
    per_report = [
        localize_variants(captured if found else None, found, size, dropped=dropped, item=index, variants=variants)
        for index, (found, dropped) in enumerate(words)
    ]
    by_variant = {variant: tuple(maps[i] for maps in per_report) for i, variant in enumerate(variants)}
    return GeneratedMaps(sample=result, localizations=by_variant[variants[0]], variants=by_variant)


def _sample(
    model: DiffusionModel,
    given: Conditioning,
    seed: int | Sequence[int],
    steps: int,
    guidance_scale: float,
    negative_prompt: str | None,
    output: SampleOutput | str,
) -> SampleResult:
    return sample(
        model,
        list(given.prompts),
        seed=seed,
        steps=steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        output=output,
        layout=given.layout,
    )
