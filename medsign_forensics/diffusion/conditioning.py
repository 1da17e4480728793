"""What a model is given for a report: its prompt and, for a model with a layout adapter, the report's layout.

One place decides this for every command that samples from reports (``medsign generate``, ``medsign base
sample``, the localization maps of decoder training and ``medsign localize``), from what the model folder says
about itself: the prompt form it was trained on (a model trained on findings prompts is sampled with the findings
prompt of the report, :mod:`medsign_forensics.reports.prompt`) and whether it has a layout adapter (then each
image's layout is drawn from its report with the image's own seed, :func:`~.layout.report_layouts`). A model that
says neither (mini-cxr 0.1.0, RoentGen) gets the report as written and no layout; the shipped mini-cxr 0.2.0
says both. :func:`sample_reports` samples reports that way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.diffusion.loader import DiffusionModel
from medsign_forensics.diffusion.sampling import SampleResult, image_seeds, sample
from medsign_forensics.reports.prompt import prompt_function


@dataclass(frozen=True)
class Conditioning:
    """The prompts (one per report) and layouts (B, kinds, grid, grid), or None for a model without an adapter."""

    prompts: tuple[str, ...]
    layout: torch.Tensor | None


def condition(model: DiffusionModel, reports: Sequence[str], seed: int | Sequence[int]) -> Conditioning:
    """The conditioning of ``model`` for ``reports``, sampled with ``seed`` (as :func:`~.sampling.sample` takes
    it: one per report, or the first of consecutive seeds)."""
    as_prompt = prompt_function(model.prompt_form)
    prompts = tuple(as_prompt(report) for report in reports)
    if model.adapter is None:
        return Conditioning(prompts, None)
    return Conditioning(prompts, model_layouts(model, reports, image_seeds(seed, len(prompts))))


def sample_reports(model: DiffusionModel, reports: Sequence[str], *, seed: int | Sequence[int],
                   **options: Any) -> SampleResult:
    """Sample one image per report as ``medsign generate`` does: :func:`condition`, then
    :func:`~.sampling.sample` with ``options`` (steps, guidance, latents, output...)."""
    given = condition(model, reports, seed)
    return sample(model, list(given.prompts), seed=seed, layout=given.layout, **options)


def model_layouts(model: DiffusionModel, reports: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    """The layouts of ``reports`` (one seed each) at ``model``'s image size, on its latent grid."""
    size = model.image_size
    return report_layouts(reports, seeds=seeds, size=size, grid=size // model.vae_scale_factor)
