"""Tiny random models for the decoder fine-tuning and evaluation tests (a module with a unique name, imported by
tests/watermark and tests/cli too): a greyscale SD folder exported by our own code, a whitened random extractor,
a random finding classifier. Fast on CPU and meaningless as models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

REPORTS = [
    "Small left pleural effusion.",
    "Right upper lobe nodule. No pneumothorax.",
    "No acute cardiopulmonary abnormality.",
    "Moderate cardiomegaly with pulmonary edema.",
    "Left lower lobe atelectasis.",
    "Large right pleural effusion with consolidation.",
]


def build_model(folder: Path, *, image_size: int = 64) -> Path:
    from medsign_forensics.diffusion.configs import tiny_config
    from medsign_forensics.diffusion.train_base import build_random_model

    config = replace(tiny_config(), image_size=image_size)
    return build_random_model(folder, config=config, texts=REPORTS * 10, seed=0)


def build_extractor(folder: Path, *, bits: int = 32, seed: int = 0) -> Path:
    """A random extractor with an identity whitening layer, saved verified (extractor.json + safetensors)."""
    from medsign_forensics.watermark.extractor_io import save_extractor
    from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor

    torch.manual_seed(seed)
    config = HiddenConfig(bits=bits, extractor_stem_channels=8, extractor_channels=8, extractor_blocks=1, groups=4)
    extractor = HiddenExtractor(config)
    extractor.attach_whitening(torch.eye(bits), torch.zeros(bits))
    summary = {"n_samples": 0, "covariance": "identity (test)", "min_eigenvalue": 1.0, "max_eigenvalue": 1.0}
    save_extractor(extractor, folder, whitening=summary)
    return folder


def build_classifier(folder: Path) -> Path:
    from medsign_forensics.phantom.classifier import ClassifierConfig, FindingClassifier, save_classifier

    torch.manual_seed(0)
    save_classifier(FindingClassifier(ClassifierConfig(channels=(8, 8), groups=4, image_size=64)), folder)
    return folder


def write_reports(path: Path, count: int = 60) -> Path:
    """A .txt corpus (one report per line) big enough for a non-empty 10 % held-out split."""
    lines = [f"{REPORTS[i % len(REPORTS)]} Study {i}." for i in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
