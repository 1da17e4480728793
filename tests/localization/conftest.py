"""Fixtures of the localization tests: tiny random diffusers parts and a tiny exported mini-cxr folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTokenizer

from helpers.localization import build_model_folder, tiny_pipeline, tiny_tokenizer, tiny_unet


@pytest.fixture(scope="session")
def tokenizer() -> CLIPTokenizer:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def pipe() -> StableDiffusionPipeline:
    return tiny_pipeline()


@pytest.fixture()
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return tiny_unet()


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def model(model_folder: Path):
    from medsign_forensics.diffusion import load_model

    return load_model(model_folder)
