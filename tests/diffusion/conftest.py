"""Tiny random models for the diffusion tests: a greyscale mini-cxr-shaped folder exported by our own code
(with its SHA256SUMS manifest) and an RGB folder saved with plain diffusers, standing in for RoentGen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.diffusion import REPORT_TEXTS

from medsign_forensics.diffusion.configs import (
    build_text_encoder,
    build_unet,
    build_vae,
    tiny_config,
)
from medsign_forensics.diffusion.export import build_random_model
from medsign_forensics.diffusion.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def grey_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny greyscale model exported by export_model: fp16 safetensors, vocab/merges, SHA256SUMS."""
    folder = tmp_path_factory.mktemp("grey") / "mini-cxr-tiny"
    return build_random_model(folder, config=tiny_config(), texts=REPORT_TEXTS, seed=0)


@pytest.fixture(scope="session")
def rgb_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny RGB SD-1.x folder saved with diffusers' own save_pretrained and a PNDM scheduler, like RoentGen."""
    from dataclasses import replace

    from diffusers import PNDMScheduler, StableDiffusionPipeline

    config = replace(tiny_config(), image_channels=3)
    tokenizer = train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1)
    torch.manual_seed(1)
    pipeline = StableDiffusionPipeline(
        vae=build_vae(config),
        text_encoder=build_text_encoder(
            config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        ),
        tokenizer=tokenizer,
        unet=build_unet(config),
        scheduler=PNDMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, skip_prk_steps=True
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("rgb") / "roentgen-standin"
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def grey_model(grey_model_dir: Path):
    from medsign_forensics.diffusion import load_model

    return load_model(grey_model_dir)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread: with two, thread hand-offs cost more than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
