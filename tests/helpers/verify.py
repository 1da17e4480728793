"""What the verification tests build on top of the planted world (:mod:`medsign_forensics.evaluate.synthetic`: a
random whitened extractor and a registry key planted to equal what it reads): a crashing scan verifier, the tiny
diffusion model, deployments for it, and the spectral world. Shared by tests/test_verify.py, tests/test_scan.py,
tests/test_generate.py and the CLI tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medsign_forensics.evaluate.synthetic import MODEL, REPORT, World
from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, load_policy
from medsign_forensics.scan import VerifierSettings
from medsign_forensics.verify import Verifier


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


class CrashingSettings(VerifierSettings):
    """Scan settings whose verifier kills its own process on files named ``crash*``: a decoder crash."""

    def open(self) -> Verifier:
        verifier = super().open()
        original = verifier.try_verify_file

        def try_verify_file(path, **kwargs):  # type: ignore[no-untyped-def]
            if Path(path).name.startswith("crash"):
                os._exit(70)
            return original(path, **kwargs)

        verifier.try_verify_file = try_verify_file  # type: ignore[method-assign]
        return verifier


REPORT_TEXTS = [REPORT, "Left lower lobe atelectasis.", "Moderate cardiomegaly with pulmonary edema.",
                "No acute cardiopulmonary abnormality."] * 10
_TINY_MODEL: dict[str, Path] = {}


def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random diffusion model (64x64 greyscale), built once per test session and shared by modules."""
    if "dir" not in _TINY_MODEL:
        from medsign_forensics.diffusion.configs import tiny_config
        from medsign_forensics.diffusion.export import build_random_model

        _TINY_MODEL["dir"] = build_random_model(tmp_path_factory.mktemp("model") / "mini-cxr-tiny",
                                                config=tiny_config(), texts=REPORT_TEXTS)
    return _TINY_MODEL["dir"]


def deployment_for(world: World, model, folder: Path, key: np.ndarray | None = None) -> Path:
    """Issue a key (random or exactly ``key``) for ``model`` and write a deployment folder with its own decoder."""
    from medsign_forensics.watermark.deployment import key_from_registry, save_deployment

    info = ModelInfo(name=model.name, version="0.1.0", weights_sha256=model.weights_sha256)
    entry = world.issue(key, deployment=folder.name, model=info)
    return save_deployment(folder, vae=model.vae, key=key_from_registry(world.registry_dir, entry.provenance_id),
                           base_model={"name": model.name, "path": str(model.path),
                                       "weights_sha256": model.weights_sha256},
                           extractor={"path": str(world.extractor_dir), "sha256": "0" * 64}, config={}, seed=0,
                           device="cpu", wall_time_s=0.0, metrics={})


@dataclass
class SpectralWorld:
    """The shipped pipeline in miniature: a 256 x 256 tiny random model, the spectral extractor (stage 1: a
    config, no training), a registry with decoys, and deployments trained in a few steps (stage 2)."""

    root: Path
    model: object
    extractor_dir: Path
    registry_dir: Path
    issuer: IssuerKey


def spectral_world(root: Path) -> SpectralWorld:
    from dataclasses import replace

    from medsign_forensics.diffusion import load_model
    from medsign_forensics.diffusion.configs import tiny_config
    from medsign_forensics.diffusion.export import build_random_model
    from medsign_forensics.watermark.extractor_io import save_spectral_extractor
    from medsign_forensics.watermark.spectral import SpectralConfig

    model_dir = build_random_model(root / "model", config=replace(tiny_config(), image_size=256), texts=REPORT_TEXTS)
    extractor_dir = root / "extractor"
    save_spectral_extractor(SpectralConfig(), extractor_dir)
    issuer = IssuerKey.generate("Test Imaging AI")
    registry_dir = root / "registry"
    with Registry.open(registry_dir, create=True) as registry:
        for index in range(3):
            registry.issue(issuer, model=MODEL, deployment=f"decoy-{index}", policy=load_policy(),
                           rng=np.random.default_rng(index))
    return SpectralWorld(root=root, model=load_model(model_dir), extractor_dir=extractor_dir,
                         registry_dir=registry_dir, issuer=issuer)


def train_spectral_deployment(world: SpectralWorld, folder: Path, *, psnr: float) -> Path:
    """Issue a key for the world's model and train a watermark layer for it (2 steps; 4 held-out reports).

    The tiny model draws noise, not chests, so the mark needs a budget far above the shipped 43 dB to be read
    (30 dB reads all bits; 60 dB reads none: a weak deployment)."""
    from medsign_forensics.localization.cache import CacheItem
    from medsign_forensics.watermark.deployment import key_from_registry
    from medsign_forensics.watermark.train_decoder import DecoderTrainConfig, train_decoder

    info = ModelInfo(name=world.model.name, version="0.1.0", weights_sha256=world.model.weights_sha256)
    with Registry.open(world.registry_dir) as registry:
        entry = registry.issue(world.issuer, model=info, deployment=folder.name, policy=load_policy())
    items = [CacheItem(f"train-{i}", REPORT_TEXTS[i], seed=i) for i in range(2)]
    held_out = [CacheItem(f"test-{i}", REPORT_TEXTS[i + 1], seed=100 + i) for i in range(4)]
    config = DecoderTrainConfig(steps=2, batch=2, psnr=psnr, sample_steps=2, sample_batch=4, log_every=1)
    train_decoder(config, model=world.model, extractor=world.extractor_dir,
                  key=key_from_registry(world.registry_dir, entry.provenance_id), out_dir=folder,
                  cache_dir=world.root / "cache", items=items, eval_items=held_out)
    return folder
