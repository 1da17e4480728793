"""Synthetic inputs for checks that need no trained weights and no data set.

* Images: :func:`sample_image` (a textured greyscale test image) and :func:`chest_like` (a radiograph-like image
  with realistic PNG sizes, for timing).
* :func:`build_extractor`: a HiDDeN extractor with random weights, whitened on unwatermarked images, saved as a
  verified folder. Verification speed does not depend on the weight values, and a whitened random extractor
  reads fair-coin bits, so it serves timing and decision-logic checks.
* :func:`random_key_registry`: a registry holding many random keys of a fresh issuer (matching cost).
* :func:`build_world`: the planted world. A registry with decoy keys and one key planted to equal exactly what the
  random extractor reads from a test image, so attribution, tampering, revocation and mismatch verdicts can be
  checked end to end without any trained watermark. It checks the provenance and decision logic, not watermark
  robustness.

The forgery, bad-input and speed benchmarks use these, and so do the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.dicom import WrittenStudy, write_synthetic_study
from medsign_forensics.fileio import save_png
from medsign_forensics.imageio import read_image
from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, RegistryEntry, load_policy
from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor, save_extractor
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor
from medsign_forensics.watermark.whitening import whiten_extractor

SIZE = 64
MODEL = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32)
REPORT = "Small left pleural effusion. No pneumothorax."
#: A small extractor architecture: whitening and reading take milliseconds.
TINY_EXTRACTOR = HiddenConfig(extractor_stem_channels=8, extractor_channels=64, extractor_blocks=1, encoder_tile=8)


def sample_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A textured uint8 greyscale image; every seed gives a different one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.2 * np.sin(rng.uniform(3, 12) * xx + rng.uniform(0, 6)) * np.cos(rng.uniform(3, 12) * yy)
    return np.rint(np.clip(base + rng.normal(0, 0.08, (size, size)), 0, 1) * 255).astype(np.uint8)


def chest_like(size: int, seed: int) -> np.ndarray:
    """A radiograph-like uint8 image (body, two lungs, spine, texture, noise): realistic PNG sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.55 + 0.15 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        body = np.where(lung, 0.2 + 0.05 * np.sin(40 * xx + 25 * yy + rng.uniform(0, 6)), body)
    body = body + 0.25 * np.exp(-((xx - 0.5) ** 2) / 0.002)
    return to_uint8(body + rng.normal(0, 0.02, body.shape))


def build_extractor(
    folder: Path, *, config: HiddenConfig = TINY_EXTRACTOR, images: np.ndarray | None = None, **extra: Any
) -> Path:
    """A random extractor of ``config`` (torch seed 0), whitened on ``images`` (N, H, W) uint8 (default: 96
    :func:`sample_image` images), saved with its manifest (``extra`` adds provenance fields); returns ``folder``."""
    if images is None:
        images = np.stack([sample_image(10_000 + i) for i in range(96)])
    torch.manual_seed(0)
    extractor = HiddenExtractor(config).eval()
    batch = torch.from_numpy(np.asarray(images).astype(np.float32) / 255.0)[:, None]
    fit = whiten_extractor(extractor, [batch])
    save_extractor(extractor, folder, whitening=fit.summary(), **extra)
    return folder


def timing_extractor(folder: Path) -> Path:
    """A whitened random extractor of the DEFAULT architecture (:class:`HiddenConfig`), for speed measurements:
    verification speed does not depend on the weight values."""
    images = np.stack([chest_like(64, 50_000 + i) for i in range(64)])
    return build_extractor(folder, config=HiddenConfig(), images=images, training={"note": "untrained, for timing"})


def read_bits(extractor: HiddenExtractor, path: Path) -> np.ndarray:
    """What verification will read from ``path`` (same reader, same extractor)."""
    return extract_bits(extractor, [read_image(path).pixels])[0][0]


def random_key_registry(folder: Path, keys: int) -> tuple[Path, IssuerKey, RegistryEntry]:
    """A registry with ``keys`` random keys of a fresh issuer; returns (folder, issuer, the first entry)."""
    issuer = IssuerKey.generate("Benchmark Issuer")
    model = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="cd" * 32)
    policy = load_policy()
    with Registry.open(folder, create=True) as registry:
        entries = [registry.issue(issuer, model=model, deployment=f"bench-{i}", policy=policy,
                                  rng=np.random.default_rng(i)) for i in range(keys)]
    return folder, issuer, entries[0]


class FixedKey:
    """Stands in for the registry's random generator so that ``Registry.issue`` draws exactly ``key`` (pass it
    through :func:`fixed_key`)."""

    def __init__(self, key: np.ndarray) -> None:
        self.key = np.asarray(key, dtype=np.uint8)

    def integers(self, low: int, high: int, size: int, dtype: type = np.uint8) -> np.ndarray:
        if (low, high, size) != (0, 2, self.key.size):
            raise ValueError(f"FixedKey holds {self.key.size} bits; asked for integers({low}, {high}, {size})")
        return self.key.astype(dtype)


def fixed_key(key: np.ndarray) -> np.random.Generator:
    """A generator for ``Registry.issue(rng=...)`` whose one draw is ``key``: the registry calls only ``integers``
    on it, which :class:`FixedKey` answers (hence the cast)."""
    return cast(np.random.Generator, FixedKey(key))


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
        extractor = load_extractor(self.extractor_dir)
        if not isinstance(extractor, HiddenExtractor):
            raise TypeError(f"the planted world's extractor is a HiDDeN one, not {type(extractor).__name__}")
        return extractor

    def issue(self, key: np.ndarray | None = None, *, deployment: str = "other-site",
              issuer: IssuerKey | None = None, model: ModelInfo = MODEL) -> RegistryEntry:
        """Issue another key (random, or exactly ``key``) in the world's registry."""
        rng = None if key is None else fixed_key(key)
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
    png = folder / "planted.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    save_png(png, pixels)
    extractor = load_extractor(extractor_dir)
    if not isinstance(extractor, HiddenExtractor):
        raise TypeError("the planted world needs a HiDDeN extractor folder (see build_extractor)")
    key = read_bits(extractor, png)
    with Registry.open(registry_dir, create=True) as registry:
        for index in range(decoys):
            registry.issue(issuer, model=MODEL, deployment=f"decoy-{index}", policy=load_policy(),
                           rng=np.random.default_rng(index))
        planted = registry.issue(issuer, model=MODEL, deployment="site-a", policy=load_policy(), rng=fixed_key(key))
    return World(folder=folder, extractor_dir=extractor_dir, registry_dir=registry_dir, issuer=issuer,
                 planted=planted, planted_png=png, planted_pixels=pixels)
