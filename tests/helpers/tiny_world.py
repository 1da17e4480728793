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


def build_model(folder: Path, *, image_size: int = 64, seed: int = 0) -> Path:
    from medsign_forensics.diffusion.configs import tiny_config
    from medsign_forensics.diffusion.export import build_random_model

    config = replace(tiny_config(), image_size=image_size)
    return build_random_model(folder, config=config, texts=REPORTS * 10, seed=seed)


def build_extractor(folder: Path, *, bits: int = 32, seed: int = 0) -> Path:
    """A random extractor with an identity whitening layer, saved verified (extractor.json + safetensors)."""
    from medsign_forensics.watermark.extractor_io import save_extractor
    from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor

    torch.manual_seed(seed)
    config = HiddenConfig(bits=bits, extractor_stem_channels=8, extractor_channels=8, extractor_blocks=1)
    extractor = HiddenExtractor(config)
    extractor.attach_whitening(torch.eye(bits), torch.zeros(bits))
    summary = {"n_samples": 0, "covariance": "identity (test)", "min_eigenvalue": 1.0, "max_eigenvalue": 1.0}
    save_extractor(extractor, folder, whitening=summary)
    return folder


def build_classifier(folder: Path) -> Path:
    from medsign_forensics.phantom.classifier import ClassifierConfig, FindingClassifier, save_classifier

    torch.manual_seed(0)
    config = ClassifierConfig(channels=(8, 8), max_taps=(), map_stage=None, groups=4, image_size=64)
    save_classifier(FindingClassifier(config), folder)
    return folder


def write_reports(path: Path, count: int = 60) -> Path:
    """A .txt corpus (one report per line) big enough for a non-empty 10 % held-out split."""
    lines = [f"{REPORTS[i % len(REPORTS)]} Study {i}." for i in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_deployment(
    folder: Path, model, extractor: Path, *, ablation: str, scale: float, key_hex: str, seed: int = 0
) -> Path:
    """A deployment without training: the base decoder with its last convolution nudged by ``scale``."""
    import copy

    from medsign_forensics.watermark.deployment import key_from_hex, save_deployment
    from medsign_forensics.watermark.extractor_io import extractor_manifest

    vae = copy.deepcopy(model.vae).float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in vae.decoder.conv_out.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return save_deployment(
        folder, vae=vae, key=key_from_hex(key_hex),
        base_model={"name": model.name, "path": str(model.path), "weights_sha256": model.weights_sha256},
        extractor={"path": str(extractor), "sha256": extractor_manifest(extractor)["sha256"]},
        config={"dataset": "cxr", "ablation": ablation, "reports": "open-i", "sample_steps": 2, "guidance_scale": 4.0},
        seed=seed, device="cpu", wall_time_s=0.0, metrics={},
    )


_WORLD: dict[str, object] = {}


def evaluation_world(factory) -> dict[str, object]:
    """One 256 x 256 tiny model, extractor, classifier, report file and three deployments per test session
    (shared by tests/evaluate and tests/cli; ``factory`` is pytest's tmp_path_factory)."""
    if not _WORLD:
        from medsign_forensics.diffusion import load_model

        root = factory.mktemp("evaluation-world")
        model_dir = build_model(root / "model", image_size=256)
        model = load_model(model_dir)
        extractor = build_extractor(root / "extractor")
        _WORLD.update(
            root=root, model_dir=model_dir, model=model, extractor=extractor,
            classifier=build_classifier(root / "classifier"), reports=write_reports(root / "reports.txt"),
            medsign=make_deployment(
                root / "medsign", model, extractor, ablation="none", scale=0.02, key_hex="a5c3e10f"
            ),
            stable=make_deployment(root / "stable", model, extractor, ablation="stable-signature", scale=0.2,
                                   key_hex="5a3c1ef0", seed=1),
            no_pre=make_deployment(
                root / "no-pre", model, extractor, ablation="no-pre", scale=0.1, key_hex="a5c3e10f", seed=2
            ),
            cache=root / "cache",
        )
    return _WORLD
