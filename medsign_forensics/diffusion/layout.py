"""The report's lesion layout, and the adapter that lets the U-Net draw findings where the layout puts them.

A layout is one plane per finding kind (:data:`KINDS`) on the latent grid: the fraction of each cell inside
that kind's lesions, quantised to 1/255. Training reads the planes of each cached render (the mask cache of
grounded training); generation draws them for a report from the phantom renderer (:func:`report_layout`), which
places every finding the parser reads at its stated side, zone and severity. The layout is the generator's
reading of the report, not a picture: it holds no anatomy and no texture.

The adapter is diffusers' T2I-Adapter (full adapter, no pixel unshuffle since the layout is already on the
latent grid) with one feature map per U-Net level, so ``StableDiffusionAdapterPipeline`` samples with it and a
plain ``StableDiffusionPipeline`` still loads and samples the folder without it. Our own sampling installs the
adapter's features on the U-Net for the duration of any pipeline call (:func:`layout_conditioning`), so the
attention capture of the localization map, the latent watermark and DDIM inversion work unchanged with a layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import numpy as np
import torch

from medsign_forensics.diffusion.configs import MiniCxrConfig
from medsign_forensics.diffusion.data import kind_masks
from medsign_forensics.errors import InputError
from medsign_forensics.reports.findings import FindingKind

#: The layout's planes, in this order (the mask cache's too).
KINDS = tuple(FindingKind)


class LayoutGuidance(str, Enum):
    """Whose layout classifier-free guidance amplifies, by leaving it out of the unconditional half.

    ``off`` is diffusers' adapter pipeline: both halves get the layout, so guidance amplifies the text alone. For
    a report that asserts no finding the layout is empty, and both halves then say "normal" (the prompt and the
    adapter's empty-layout features), so guidance has almost nothing to push away from: mini-cxr 0.2.0 drew a
    finding into a fifth of normal images. ``empty`` (the default) leaves the layout out of those images'
    unconditional half only, so that guidance pushes them away from the whole distribution, findings included
    (0.198 -> 0.104 of 192 validation images, BENCHMARKS.md); a layout with findings keeps ``off``'s behaviour,
    because amplifying it halved what was drawn. ``all`` leaves every layout out of the unconditional half.
    """

    OFF = "off"
    EMPTY = "empty"
    ALL = "all"


def guided_shares(layout: torch.Tensor, policy: LayoutGuidance | str) -> torch.Tensor:
    """Per image of ``layout`` (B, kinds, grid, grid): 1.0 where ``policy`` leaves its layout out of the
    unconditional half of guidance, else 0.0 (:func:`layout_conditioning`'s ``guided``)."""
    policy = LayoutGuidance(policy)
    if policy is LayoutGuidance.ALL:
        return torch.ones(len(layout))
    if policy is LayoutGuidance.EMPTY:
        return (layout.flatten(1).amax(1) <= 0).float()
    return torch.zeros(len(layout))


def layout_planes(masks: Mapping[FindingKind, np.ndarray], grid: int) -> np.ndarray:
    """uint8 (kinds, grid, grid): 255 x each kind's cell fractions, zero for kinds not drawn."""
    planes = np.zeros((len(KINDS), grid, grid), np.uint8)
    for kind, mask in masks.items():
        planes[KINDS.index(kind)] = np.round(np.clip(mask, 0.0, 1.0) * 255)
    return planes


def report_layout(text: str, *, seed: int, size: int, grid: int) -> torch.Tensor:
    """The layout (kinds, grid, grid) float32 in [0, 1] of the phantom the renderer draws for ``text`` with
    ``seed`` at ``size``: where this reading of the report puts each asserted finding (none for a normal one)."""
    from medsign_forensics.reports import parse_report

    planes = layout_planes(kind_masks(parse_report(text), seed=seed, size=size, grid=grid), grid)
    return torch.from_numpy(planes.astype(np.float32) / 255.0)


def report_layouts(texts: Sequence[str], *, seeds: Sequence[int], size: int, grid: int) -> torch.Tensor:
    """:func:`report_layout` of each text with its seed, stacked (B, kinds, grid, grid)."""
    return torch.stack([report_layout(t, seed=s, size=size, grid=grid) for t, s in zip(texts, seeds, strict=True)])


def build_adapter(config: MiniCxrConfig) -> Any:  # -> T2IAdapter
    """A T2I full adapter from the layout's planes to one feature map per U-Net level (its channels, its grid)."""
    from diffusers import T2IAdapter

    return T2IAdapter(
        in_channels=len(KINDS),
        channels=list(config.unet.block_out_channels),
        num_res_blocks=config.layout.res_blocks,
        downscale_factor=1,
        adapter_type="full_adapter",
    )


def adapter_residuals(adapter: Any, layout: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The U-Net's ``down_intrablock_additional_residuals`` for ``layout`` (B, kinds, grid, grid); rows where
    ``keep`` is False get none (zeros), exactly as if no adapter were there."""
    features = adapter(layout)
    if keep is None:
        return list(features)
    gate = keep.to(features[0].dtype)[:, None, None, None]
    return [feature * gate for feature in features]


@contextmanager
def layout_conditioning(
    unet: Any, adapter: Any, layout: torch.Tensor, *, guided: float | torch.Tensor = 0.0
) -> Iterator[None]:
    """While open, every U-Net call gets the adapter's features of ``layout`` (B, kinds, grid, grid), computed
    once. A call on k x B items (classifier-free guidance stacks the unconditional and conditional halves, each
    in prompt order) gets them repeated k times, as diffusers' adapter pipeline does. ``guided`` is the share of
    the features withheld from the unconditional half of a guided call, one for all images or one per image
    (:func:`guided_shares`): at 1 that half gets none, so that guidance amplifies the layout as well as the text
    (fractions are a research lever, BENCHMARKS.md)."""
    parameter = next(adapter.parameters())
    with torch.no_grad():
        features = adapter(layout.to(parameter.device, parameter.dtype))
    shares = torch.as_tensor(guided, dtype=torch.float32).expand(len(layout)).to(parameter.device)
    kept = None if not bool(shares.any()) else (1 - shares)[:, None, None, None]  # the unconditional half's share

    def add_features(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[0] % layout.shape[0]:
            raise InputError(f"{layout.shape[0]} layouts for a U-Net batch of {sample.shape[0]}")
        repeat = sample.shape[0] // layout.shape[0]
        residuals = [feature.repeat(repeat, 1, 1, 1).to(sample.dtype) for feature in features]
        if repeat == 2 and kept is not None:
            share = kept.to(sample.dtype)
            residuals = [torch.cat([share * r[: len(layout)], r[len(layout) :]]) for r in residuals]
        return args, {**kwargs, "down_intrablock_additional_residuals": residuals}

    handle = unet.register_forward_pre_hook(add_features, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
