"""Tiny random models for the diffusion tests: a greyscale mini-cxr-shaped folder exported by our own code
(with its SHA256SUMS manifest) and an RGB folder saved with plain diffusers, standing in for RoentGen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsign_forensics.diffusion.configs import (
    build_text_encoder,
    build_unet,
    build_vae,
    tiny_config,
)
from medsign_forensics.diffusion.tokenizer import train_tokenizer
from medsign_forensics.diffusion.train_base import build_random_model

REPORT_TEXTS = [
    "Heart size is enlarged, consistent with cardiomegaly. No pleural effusion.",
    "Left lower lobe atelectasis. No pneumothorax.",
    "Small right pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality. The lungs are clear.",
    "Moderate cardiomegaly. Pulmonary edema. Bilateral effusions.",
    "Right upper lobe pneumonia. No pneumothorax or effusion.",
] * 20


class StandInSource:
    """A study source with the training interface: a bright disc on the captioned side, or none."""

    def __init__(self, count: int = 6) -> None:
        self._captions = [
            ("Left pleural effusion.", "Effusion on the left."),
            ("Right pleural effusion.",),
            ("No acute cardiopulmonary abnormality.",),
        ]
        self.count = count

    def __len__(self) -> int:
        return self.count

    def report_id(self, index: int) -> str:
        return f"standin-{index}"

    def captions(self, index: int) -> tuple[str, ...]:
        return self._captions[index % 3]

    def render(self, index: int, *, seed: int, size: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:size, 0:size] / size
        image = 0.2 + 0.05 * rng.standard_normal((size, size))
        kind = index % 3
        if kind < 2:
            cx = 0.7 if kind == 0 else 0.3  # the patient's left is on the image right
            image += 0.6 * (((xx - cx) ** 2 + (yy - 0.6) ** 2) < 0.04)
        return np.clip(image, 0, 1).astype(np.float32)


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


@pytest.fixture()
def standin_source() -> StandInSource:
    return StandInSource()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread: with two, thread hand-offs cost more than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
