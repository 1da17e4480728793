"""Typed configurations of the mini-cxr model and its training, and the builders of its diffusers parts.

Two named configurations exist: ``tiny`` (random-weight models for tests, seconds on CPU) and ``default``
(mini-cxr's architecture and its from-scratch recipe; the shipped 0.2.0 adds the fine-tune fields of
``benchmarks/recipes/mini-cxr-layout-cpu.json``). A JSON file may override any field of either:
``{"base": "default", "unet_train": {"steps": 5000}}``.

Sizes of ``default`` were chosen by measurement on the 2-core CPU machine (benchmarks/sampling_speed.py):
the U-Net has cross-attention at 32x32, 16x16 and 8x8 latent resolution (maps for the localization map at
three scales), but at 32x32 its first attention is cross-attention too (``only_cross_attention``), because
self-attention over 1024 positions would triple the CPU cost of sampling. All weights fit in 30 MB as fp16,
each file under 16 MiB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError


class PredictionType(str, Enum):
    """What the U-Net predicts. mini-cxr uses v: better behaved at high noise for a small model."""

    EPSILON = "epsilon"
    V = "v_prediction"


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 2048
    min_frequency: int = 2
    max_token_length: int = 6


@dataclass(frozen=True)
class TextEncoderConfig:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024


@dataclass(frozen=True)
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8


@dataclass(frozen=True)
class UNetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    attention_heads: tuple[int, ...] = (2, 4, 4)
    # Per level: True makes the block's first attention cross-attention as well (no self-attention).
    only_cross_attention: tuple[bool, ...] = (True, False, False)
    layers_per_block: int = 1
    norm_num_groups: int = 32


@dataclass(frozen=True)
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: PredictionType = PredictionType.V
    timestep_spacing: str = "trailing"


#: How training captions (and so sampling prompts) are made from a report (see :class:`DataConfig`), described.
CAPTION_FORMS = {"report": "the reports as written", "findings": "the findings prompt of each report"}


@dataclass(frozen=True)
class DataConfig:
    """``captions``: "report" trains on the report's text (its caption variants), "findings" on its findings
    prompt (:mod:`medsign_forensics.reports.prompt`); a model is sampled with the form it was trained on."""

    corpus: str = "open-i"
    test_fraction: float = 0.1
    split_seed: int = 0
    renders_per_report: int = 4
    max_reports: int | None = None
    captions: str = "report"

    def __post_init__(self) -> None:
        if self.captions not in CAPTION_FORMS:
            raise InputError(f"data.captions must be one of {', '.join(CAPTION_FORMS)}, got {self.captions!r}")


@dataclass(frozen=True)
class LesionFinetuneConfig:
    """Stage A's second phase (:mod:`~medsign_forensics.diffusion.vae_lesions`): ``steps`` more updates of the
    whole VAE after ``vae_train.steps``, on crops centred on a lesion (``centred`` of them), where each lesion's
    mean error counts ``weight`` times (a 5-pixel granuloma as much as a consolidation) and so does each 8 x 8
    cell's largest error away from the lesions (a made-up dot costs what a missed lesion does). 0 steps (the
    default) is off: stage A is the plain one."""

    steps: int = 0
    weight: float = 10.0
    learning_rate: float = 2e-4
    batch_size: int = 16
    centred: float = 0.7

    def __post_init__(self) -> None:
        if self.steps < 0 or self.weight < 0 or self.batch_size < 1 or not 0.0 <= self.centred <= 1.0:
            raise InputError(
                f"vae_train.lesions needs steps >= 0, weight >= 0, batch_size >= 1 and centred in [0, 1], got "
                f"steps={self.steps}, weight={self.weight}, batch_size={self.batch_size}, centred={self.centred}"
            )


@dataclass(frozen=True)
class VaeTrainConfig:
    steps: int = 8000
    batch_size: int = 8
    crop_size: int = 128
    learning_rate: float = 4e-4
    warmup_steps: int = 500
    kl_weight: float = 1e-6
    ssim_weight: float = 0.2
    frequency_weight: float = 0.05
    checkpoint_every: int = 500
    latent_batches: int = 16  # batches encoded to estimate the latent scaling factor
    lesions: LesionFinetuneConfig = field(default_factory=LesionFinetuneConfig)
    # Standardise each latent channel at the end of stage A, folded into the VAE's 1x1 convolutions
    # (:mod:`~medsign_forensics.diffusion.latent_norm`); False keeps the single global scaling factor.
    channel_norm: bool = False

    @property
    def total_steps(self) -> int:
        """Stage A's updates: the plain phase, then the lesion phase."""
        return self.steps + self.lesions.steps


class GroundingTarget(str, Enum):
    """The attention's target on each layer's grid (:class:`GroundingConfig`)."""

    AREA = "area"
    PEAK = "peak"


@dataclass(frozen=True)
class GroundingConfig:
    """Token-grounded cross-attention during stage B (:mod:`medsign_forensics.diffusion.grounding`): the weights
    of L_token and L_pixel added to the denoising loss. Both 0 (the default) is off: training is exactly the
    ungrounded one. ``locations`` grounds the location words of a finding ("left", "base") on its mask as well
    as its finding words, as the localization map reads both. ``lesion_weight`` w grounds the denoising loss
    itself on the same masks: the squared error of each latent cell a named lesion touches counts 1 + w times,
    so the small share of the image that carries a finding (a 3 mm granuloma touches one or two of 1,024 cells)
    is not drowned by the anatomy around it. ``target`` is the attention's target on each layer's grid: ``area``
    the fraction of each cell inside the lesion; ``peak`` that fraction scaled so the fullest cell is 1, so a lesion
    smaller than a cell still owns the cell it lies in (a 3-pixel granuloma fills 0.14 of a 32 x 32 cell and 0.009
    of an 8 x 8 one, so under ``area`` its token can never hold more than that share of its attention inside)."""

    token_weight: float = 0.0
    pixel_weight: float = 0.0
    locations: bool = True
    lesion_weight: float = 0.0
    target: GroundingTarget = GroundingTarget.AREA

    def __post_init__(self) -> None:
        if self.token_weight < 0 or self.pixel_weight < 0 or self.lesion_weight < 0:
            raise InputError(
                f"grounding weights must be >= 0, got token_weight={self.token_weight}, "
                f"pixel_weight={self.pixel_weight}, lesion_weight={self.lesion_weight}"
            )

    @property
    def attention(self) -> bool:
        """Whether the cross-attention maps are grounded (L_token or L_pixel on)."""
        return self.token_weight > 0 or self.pixel_weight > 0

    @property
    def enabled(self) -> bool:
        return self.attention or self.lesion_weight > 0


@dataclass(frozen=True)
class LayoutConfig:
    """A layout adapter (:mod:`medsign_forensics.diffusion.layout`): a diffusers T2I-Adapter that reads the
    report's lesion layout, one plane per finding kind on the latent grid, and adds its features to the U-Net's
    down blocks. The U-Net has no positional input, so cross-attention alone cannot tell it which side of the
    chest a "left effusion" goes on (issue 15 measured 26-31 % on the stated side); the layout can. ``dropout``
    is the share of training items that get no adapter features at all, so the U-Net still samples (and is
    inverted for the localization map) without a layout."""

    enabled: bool = False
    dropout: float = 0.2
    res_blocks: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise InputError(f"layout.dropout must be in [0, 1), got {self.dropout}")
        if self.res_blocks < 1:
            raise InputError(f"layout.res_blocks must be >= 1, got {self.res_blocks}")


@dataclass(frozen=True)
class UNetTrainConfig:
    steps: int = 30000
    batch_size: int = 16
    learning_rate: float = 3e-4
    warmup_steps: int = 1000
    caption_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    ema_decay: float | None = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 1000
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    # The rate's share left at ``steps``: 1 holds it after warm-up (a run resumed for more steps goes on as it
    # was); below 1 a cosine cool-down runs from warm-up to ``steps``, for a run that ends there.
    lr_floor: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lr_floor <= 1.0:
            raise InputError(f"unet_train.lr_floor must be in [0, 1], got {self.lr_floor}")


@dataclass(frozen=True)
class MiniCxrConfig:
    """Everything that defines a mini-cxr model and how it was trained."""

    name: str = "mini-cxr"
    image_size: int = 256
    image_channels: int = 1
    seed: int = 0
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae_train: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    unet_train: UNetTrainConfig = field(default_factory=UNetTrainConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON data. Settings added after models were shipped (``unet_train.grounding``,
        its ``lesion_weight`` and ``target``, ``unet_train.lr_floor``, ``data.captions``, ``layout``,
        ``vae_train.lesions`` and ``channel_norm``) are written only when they differ from their defaults, so a
        config that does not use them is written exactly as before they existed (the shipped model card, run folders
        begun earlier); reading fills them in with the defaults."""
        data = config_to_dict(self)
        if self.unet_train.grounding == GroundingConfig():
            del data["unet_train"]["grounding"]
        else:
            if self.unet_train.grounding.lesion_weight == 0:
                del data["unet_train"]["grounding"]["lesion_weight"]
            if self.unet_train.grounding.target == GroundingConfig.target:
                del data["unet_train"]["grounding"]["target"]
        if self.unet_train.lr_floor == UNetTrainConfig.lr_floor:
            del data["unet_train"]["lr_floor"]
        if self.vae_train.lesions == LesionFinetuneConfig():
            del data["vae_train"]["lesions"]
        if not self.vae_train.channel_norm:
            del data["vae_train"]["channel_norm"]
        if self.data.captions == DataConfig.captions:
            del data["data"]["captions"]
        if self.layout == LayoutConfig():
            del data["layout"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MiniCxrConfig:
        return config_from_dict(cls, data)


def default_config() -> MiniCxrConfig:
    """mini-cxr's architecture and from-scratch recipe: 256x256 greyscale, latent 4x32x32."""
    return MiniCxrConfig()


def tiny_config() -> MiniCxrConfig:
    """Random-weight models for tests: 64x64 greyscale, latent 4x8x8, a forward pass in milliseconds."""
    return MiniCxrConfig(
        name="mini-cxr-tiny",
        image_size=64,
        tokenizer=TokenizerConfig(vocab_size=700, min_frequency=1),
        text_encoder=TextEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        vae=VaeConfig(block_out_channels=(8, 8, 16, 16), norm_num_groups=4),
        unet=UNetConfig(
            block_out_channels=(16, 32),
            attention_heads=(1, 2),
            only_cross_attention=(True, False),
            norm_num_groups=8,
        ),
        data=DataConfig(renders_per_report=1, max_reports=16),
        vae_train=VaeTrainConfig(
            steps=2, batch_size=2, crop_size=32, warmup_steps=0, checkpoint_every=1, latent_batches=1
        ),
        unet_train=UNetTrainConfig(steps=2, batch_size=2, warmup_steps=0, ema_decay=0.9, checkpoint_every=1),
    )


NAMED_CONFIGS = {"default": default_config, "tiny": tiny_config}


def load_config(name_or_path: str | Path) -> MiniCxrConfig:
    """``default``, ``tiny``, or a JSON file of overrides on top of its ``base`` (default ``default``)."""
    text = str(name_or_path)
    if text in NAMED_CONFIGS:
        return NAMED_CONFIGS[text]()
    path = Path(text)
    if not path.is_file():
        known = ", ".join(NAMED_CONFIGS)
        raise InputError(f"no such config file; give one of {known} or a JSON file", path=path)
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"the config file is not valid JSON ({error})", path=path) from None
    if not isinstance(overrides, dict):
        raise InputError("the config file must hold a JSON object", path=path)
    base_name = overrides.pop("base", "default")
    if base_name not in NAMED_CONFIGS:
        raise InputError(f"unknown base config {base_name!r}; use one of {', '.join(NAMED_CONFIGS)}", path=path)
    merged = _deep_merge(NAMED_CONFIGS[base_name]().to_dict(), overrides)
    try:
        return MiniCxrConfig.from_dict(merged)
    except InputError as error:
        raise InputError(str(error), path=path) from None


# --- builders of the diffusers / transformers parts -------------------------------------------------------


def build_vae(config: MiniCxrConfig):  # -> AutoencoderKL
    """A greyscale AutoencoderKL with 8x downsampling (for 4 levels) and ``latent_channels`` channels."""
    from diffusers import AutoencoderKL

    levels = len(config.vae.block_out_channels)
    _check_divisible(
        "vae.block_out_channels", config.vae.block_out_channels, config.vae.norm_num_groups, "vae.norm_num_groups"
    )
    return AutoencoderKL(
        in_channels=config.image_channels,
        out_channels=config.image_channels,
        latent_channels=config.vae.latent_channels,
        block_out_channels=config.vae.block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=config.vae.layers_per_block,
        norm_num_groups=config.vae.norm_num_groups,
        sample_size=config.image_size,
        scaling_factor=1.0,
    )


def build_text_encoder(config: MiniCxrConfig, *, vocab_size: int, bos_token_id: int, eos_token_id: int):
    """A CLIP text transformer trained from scratch (no pretrained weights exist offline)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text = config.text_encoder
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_layers,
            num_attention_heads=text.num_heads,
            max_position_embeddings=77,
            projection_dim=text.hidden_size,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    )


def build_unet(config: MiniCxrConfig):  # -> UNet2DConditionModel
    """A UNet2DConditionModel with cross-attention at every level and in the middle block."""
    from diffusers import UNet2DConditionModel

    unet = config.unet
    levels = len(unet.block_out_channels)
    if not (len(unet.attention_heads) == len(unet.only_cross_attention) == levels):
        raise InputError("unet.attention_heads and unet.only_cross_attention need one entry per level")
    _check_divisible("unet.block_out_channels", unet.block_out_channels, unet.norm_num_groups, "unet.norm_num_groups")
    for channels, heads in zip(unet.block_out_channels, unet.attention_heads, strict=True):
        _check_divisible("unet.block_out_channels", (channels,), heads, "its unet.attention_heads entry")
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.vae.latent_channels,
        out_channels=config.vae.latent_channels,
        block_out_channels=unet.block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        layers_per_block=unet.layers_per_block,
        attention_head_dim=unet.attention_heads,  # diffusers' legacy name: this is the number of heads
        only_cross_attention=unet.only_cross_attention,
        cross_attention_dim=config.text_encoder.hidden_size,
        norm_num_groups=unet.norm_num_groups,
    )


def _check_divisible(field_name: str, values: tuple[int, ...], divisor: int, divisor_name: str) -> None:
    bad = [v for v in values if v % divisor]
    if bad:
        raise InputError(f"config {field_name} has {bad}, which {divisor_name} ({divisor}) does not divide")


def build_training_scheduler(config: MiniCxrConfig):  # -> DDPMScheduler
    """The noise schedule used to train; sampling uses DPM-Solver++ on the same betas."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_scheduler_kwargs(config.scheduler))


def build_sampling_scheduler(config: MiniCxrConfig):  # -> DPMSolverMultistepScheduler
    """DPM-Solver++ (2nd order), what the exported folder's scheduler/ holds."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **_scheduler_kwargs(config.scheduler), algorithm_type="dpmsolver++", solver_order=2
    )


def _scheduler_kwargs(scheduler: SchedulerConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": scheduler.num_train_timesteps,
        "beta_start": scheduler.beta_start,
        "beta_end": scheduler.beta_end,
        "beta_schedule": scheduler.beta_schedule,
        "prediction_type": scheduler.prediction_type.value,
        "timestep_spacing": scheduler.timestep_spacing,
        "steps_offset": 1,  # diffusers' SD-1.x convention; used only by "leading" spacing
    }


# --- file overrides -----------------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
