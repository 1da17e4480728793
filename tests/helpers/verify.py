"""A tiny verification world for tests: a random but whitened extractor, and a registry in which one key is
exactly what that extractor reads from a test image ("planted"), so attribution can be tested without any
trained watermark. Shared by tests/test_verify.py, tests/test_scan.py, tests/test_generate.py and the CLI tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsign_forensics.dicom import WrittenStudy, write_synthetic_study
from medsign_forensics.imageio import read_image
from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, RegistryEntry, load_policy
from medsign_forensics.scan import VerifierSettings
from medsign_forensics.verify import Verifier
from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor, save_extractor
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor
from medsign_forensics.watermark.whitening import whiten_extractor

SIZE = 64
MODEL = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32)
REPORT = "Small left pleural effusion. No pneumothorax."
TINY = HiddenConfig(extractor_stem_channels=8, extractor_channels=64, extractor_blocks=1, encoder_tile=8)


def sample_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A textured uint8 greyscale image; every seed gives a different one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.2 * np.sin(rng.uniform(3, 12) * xx + rng.uniform(0, 6)) * np.cos(rng.uniform(3, 12) * yy)
    return np.rint(np.clip(base + rng.normal(0, 0.08, (size, size)), 0, 1) * 255).astype(np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def build_extractor(folder: Path) -> Path:
    """A random tiny extractor, whitened on 96 unwatermarked test images, saved with its manifest."""
    torch.manual_seed(0)
    extractor = HiddenExtractor(TINY).eval()
    batch = torch.from_numpy(np.stack([sample_image(10_000 + i) for i in range(96)]).astype(np.float32) / 255.0)
    fit = whiten_extractor(extractor, [batch[:, None]])
    save_extractor(extractor, folder, whitening=fit.summary())
    return folder


def read_bits(extractor: HiddenExtractor, path: Path) -> np.ndarray:
    """What verification will read from ``path`` (same reader, same extractor)."""
    return extract_bits(extractor, [read_image(path).pixels])[0][0]


class FixedKey:
    """Stands in for the registry's random generator so that ``Registry.issue`` draws exactly ``key``."""

    def __init__(self, key: np.ndarray) -> None:
        self.key = np.asarray(key, dtype=np.uint8)

    def integers(self, low: int, high: int, size: int, dtype: type = np.uint8) -> np.ndarray:
        assert (low, high, size) == (0, 2, self.key.size)
        return self.key.astype(dtype)


@dataclass
class World:
    """A registry folder with decoys and one planted key, the issuer, and the extractor folder."""

    folder: Path
    extractor_dir: Path
    registry_dir: Path
    issuer: IssuerKey
    planted: RegistryEntry
    planted_png: Path
    planted_pixels: np.ndarray

    def open_registry(self) -> Registry:
        return Registry.open(self.registry_dir)

    def extractor(self) -> HiddenExtractor:
        return load_extractor(self.extractor_dir)

    def issue(self, key: np.ndarray | None = None, *, deployment: str = "other-site",
              issuer: IssuerKey | None = None, model: ModelInfo = MODEL) -> RegistryEntry:
        """Issue another key (random, or exactly ``key``) in the world's registry."""
        rng = None if key is None else FixedKey(key)
        with self.open_registry() as registry:
            return registry.issue(issuer or self.issuer, model=model, deployment=deployment,
                                  policy=load_policy(), rng=rng)

    def write_study(self, path: Path, pixels: np.ndarray | None = None, *, entry: RegistryEntry | None = None,
                    signer: IssuerKey | None = None) -> WrittenStudy:
        """A synthetic study of ``pixels`` (default: the planted image) under ``entry`` (default: planted)."""
        entry = entry or self.planted
        return write_synthetic_study(path, image=self.planted_pixels if pixels is None else pixels,
                                     report_text=REPORT, model_name=MODEL.name, model_version=MODEL.version,
                                     weights_sha256=MODEL.weights_sha256, provenance=entry.signed_record,
                                     signer=signer or self.issuer, seed=7)


def build_world(folder: Path, extractor_dir: Path, *, decoys: int = 5) -> World:
    """A registry with ``decoys`` random keys and one key planted to match the planted PNG."""
    issuer = IssuerKey.generate("Test Imaging AI")
    registry_dir = folder / "registry"
    pixels = sample_image(1)
    png = save_png(folder / "planted.png", pixels)
    key = read_bits(load_extractor(extractor_dir), png)
    with Registry.open(registry_dir, create=True) as registry:
        for index in range(decoys):
            registry.issue(issuer, model=MODEL, deployment=f"decoy-{index}", policy=load_policy(),
                           rng=np.random.default_rng(index))
        planted = registry.issue(issuer, model=MODEL, deployment="site-a", policy=load_policy(), rng=FixedKey(key))
    return World(folder=folder, extractor_dir=extractor_dir, registry_dir=registry_dir, issuer=issuer,
                 planted=planted, planted_png=png, planted_pixels=pixels)


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
