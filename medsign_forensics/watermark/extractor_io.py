"""Saving, loading and running extractors: the spectral extractor (a config, no weights) and the HiDDeN
extractor (and its encoder) as verified safetensors files.

A spectral extractor folder holds only ``extractor.json`` (format ``medsign-spectral-extractor``): its config,
its empirical null calibration (``null_calibration``, optional) and the SHA-256 of the canonical JSON of both,
which deployments record as "the extractor's hash".

A model folder holds ``extractor.safetensors`` and ``extractor.json`` (and the same pair for ``encoder``). The
JSON manifest records the architecture config, the SHA-256 of the weights file, the whitening fit if any, and
the software version. Loading rebuilds the module from the config, checks the hash, and loads with strict key
checking (:mod:`medsign_forensics.training.weights`), so a truncated, swapped or mismatched file fails loudly
(ModelError) instead of running with random weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics import __version__
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import write_json
from medsign_forensics.training.weights import load_state, load_tensors, read_json_manifest, save_tensors
from medsign_forensics.watermark.calibration import NullCalibration
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenEncoder, HiddenExtractor
from medsign_forensics.watermark.spectral import SpectralConfig, SpectralExtractor

FORMAT_VERSION = 1
EXTRACTOR_STEM = "extractor"
ENCODER_STEM = "encoder"
SPECTRAL_FORMAT = "medsign-spectral-extractor"
#: Every extractor a folder can hold.
Extractor = HiddenExtractor | SpectralExtractor


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys, no spaces): the identity of a weight-free extractor."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_spectral_extractor(config: SpectralConfig, folder: Path, *, calibration: NullCalibration | None = None,
                            **extra: Any) -> Path:
    """Write a spectral extractor folder (``extractor.json`` only); returns the manifest path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = config.to_dict()
    null = None if calibration is None else calibration.to_dict()
    manifest = {"format": SPECTRAL_FORMAT, "format_version": FORMAT_VERSION,
                "software": f"medsign-forensics {__version__}", "config": data, "null_calibration": null,
                "sha256": config_sha256({"config": data, "null_calibration": null}), **extra}
    path = folder / f"{EXTRACTOR_STEM}.json"
    write_json(path, manifest)
    return path


def bits_are_fair(extractor: Extractor) -> bool:
    """Whether the extractor's bits are fair coins on unmarked images, which every p-value assumes: by
    construction for the spectral extractor, only after whitening for HiDDeN."""
    return True if isinstance(extractor, SpectralExtractor) else extractor.whitened


def _save_module(module: torch.nn.Module, folder: Path, stem: str, manifest: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    sha = save_tensors(weights, module.state_dict(), metadata={"format": f"medsign-hidden-{stem}"})
    manifest = {
        "format": f"medsign-hidden-{stem}",
        "format_version": FORMAT_VERSION,
        "software": f"medsign-forensics {__version__}",
        "weights": weights.name,
        "sha256": sha,
        **manifest,
    }
    write_json(folder / f"{stem}.json", manifest)
    return weights


def _read_manifest(path: Path, stem: str) -> tuple[Path, dict[str, Any]]:
    """Resolve a folder, manifest or weights path to (folder, manifest)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest_path = folder / f"{stem}.json"
    manifest = read_json_manifest(manifest_path, what=f"{stem}.json manifest",
                                  hint=f"point to a folder written by save_{stem}")
    if stem == EXTRACTOR_STEM and manifest.get("format") == SPECTRAL_FORMAT:
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"this is not a version-{FORMAT_VERSION} spectral extractor manifest", path=manifest_path)
        return folder, manifest
    if manifest.get("format") != f"medsign-hidden-{stem}" or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"this is not a version-{FORMAT_VERSION} medsign {stem} manifest; re-save it with this software",
            path=manifest_path,
        )
    return folder, manifest


def _load_state(module: torch.nn.Module, folder: Path, manifest: dict[str, Any], stem: str) -> None:
    weights = folder / str(manifest.get("weights", ""))
    state = load_tensors(weights, sha256=manifest.get("sha256"), what=f"{stem} weights",
                         recorded_in=f"{stem}.json")
    load_state(module, state, what=f"{stem} weights", target="the recorded architecture", path=weights)


def save_extractor(
    extractor: HiddenExtractor, folder: Path, *, whitening: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """Save the extractor (with its whitening layer if attached) and its manifest; returns the weights path.

    ``whitening`` is the fit summary recorded in the manifest; ``extra`` adds provenance fields (training
    config hash, steps, ...).
    """
    if extractor.whitened != (whitening is not None):
        raise InputError("pass the whitening summary exactly when the extractor has a whitening layer")
    manifest = {"config": extractor.config.to_dict(), "whitening": whitening, **extra}
    return _save_module(extractor, folder, EXTRACTOR_STEM, manifest)


def load_extractor(path: Path, *, device: str | torch.device = "cpu") -> Extractor:
    """Load a verified extractor in eval mode from a folder (or its manifest or weights path)."""
    folder, manifest = _read_manifest(Path(path), EXTRACTOR_STEM)
    if manifest.get("format") == SPECTRAL_FORMAT:
        return _load_spectral(folder, manifest).to(device).eval()
    extractor = _build(HiddenExtractor, manifest, folder)
    if manifest.get("whitening") is not None:
        extractor.add_empty_whitening()
    _load_state(extractor, folder, manifest, EXTRACTOR_STEM)
    return extractor.to(device).eval()


def extractor_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a saved extractor (config, hash, whitening summary, provenance)."""
    return _read_manifest(Path(path), EXTRACTOR_STEM)[1]


def save_encoder(encoder: HiddenEncoder, folder: Path, **extra: Any) -> Path:
    """Save the pre-training encoder and its manifest (needed only for stage-1 evaluation)."""
    return _save_module(encoder, folder, ENCODER_STEM, {"config": encoder.config.to_dict(), **extra})


def load_encoder(path: Path, *, device: str | torch.device = "cpu") -> HiddenEncoder:
    folder, manifest = _read_manifest(Path(path), ENCODER_STEM)
    encoder = _build(HiddenEncoder, manifest, folder)
    _load_state(encoder, folder, manifest, ENCODER_STEM)
    return encoder.to(device).eval()


def _load_spectral(folder: Path, manifest: dict[str, Any]) -> SpectralExtractor:
    config, null = manifest.get("config"), manifest.get("null_calibration")
    if not isinstance(config, dict) or config_sha256({"config": config, "null_calibration": null}) != \
            manifest.get("sha256"):
        raise ModelError("the spectral extractor's config or calibration does not match its recorded SHA-256; the "
                         "manifest was edited: restore it", path=folder / f"{EXTRACTOR_STEM}.json")
    try:
        extractor = SpectralExtractor(SpectralConfig.from_dict(config))
        extractor.calibration = None if null is None else NullCalibration.from_dict(null)
    except (TypeError, InputError) as error:
        raise ModelError(f"the spectral extractor's config is unusable ({error})", path=folder) from None
    if extractor.calibration is not None and extractor.calibration.bits != extractor.bits:
        raise ModelError("the null calibration is for another key length than the extractor's", path=folder)
    return extractor


def _build(cls: type, manifest: dict[str, Any], folder: Path) -> Any:
    try:
        return cls(HiddenConfig.from_dict(manifest["config"]))
    except (KeyError, TypeError, InputError) as error:
        raise ModelError(f"the manifest's architecture config is unusable ({error})", path=folder) from None


def _as_batches(images: torch.Tensor | Sequence[np.ndarray], batch_size: int) -> list[tuple[list[int], torch.Tensor]]:
    """Group images of equal size into batches, remembering their positions."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 1:
            raise InputError(f"expected a (B, 1, H, W) tensor, got {tuple(images.shape)}")
        return [
            (list(range(i, min(i + batch_size, len(images)))), images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        if np.ndim(image) != 2:
            raise InputError(f"image {index} has shape {np.shape(image)}; expected a greyscale (H, W) array")
        by_size.setdefault(tuple(np.shape(image)), []).append(index)
    batches = []
    for indices in by_size.values():
        for i in range(0, len(indices), batch_size):
            chunk = indices[i : i + batch_size]
            stacked = np.stack([np.asarray(images[j], dtype=np.float32) for j in chunk])[:, None]
            batches.append((chunk, torch.from_numpy(stacked)))
    return batches


@torch.inference_mode()
def extract_bits(
    extractor: Extractor,
    images: torch.Tensor | Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    raw: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Extract keys from greyscale images: returns (bits uint8 (N, k), logits float32 (N, k)).

    ``images`` is a (B, 1, H, W) tensor or a sequence of float32 (H, W) arrays in [0, 1] of any sizes. The
    logits are whitened when the extractor carries whitening, unless ``raw`` asks for the pre-whitening ones.
    A spectral extractor reads each image on its own (its spectrum must not see padding).
    """
    extractor.eval()
    if isinstance(extractor, SpectralExtractor):
        readings = [extractor.read(_single(image)) for image in _items(images)]
        logits_all = np.stack([r.logits[0].float().cpu().numpy() for r in readings]) if readings else \
            np.zeros((0, extractor.bits), dtype=np.float32)
        return (logits_all > 0).astype(np.uint8), logits_all.astype(np.float32)
    device = extractor.head.weight.device
    n = len(images)
    logits = np.zeros((n, extractor.config.bits), dtype=np.float32)
    run = extractor.raw_logits if raw else extractor
    for indices, batch in _as_batches(images, batch_size):
        # channels_last roughly doubles oneDNN convolution throughput on CPU.
        batch = batch.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
        logits[indices] = run(batch).float().cpu().numpy()
    return (logits > 0).astype(np.uint8), logits


def _items(images: torch.Tensor | Sequence[np.ndarray]) -> list[Any]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 1:
            raise InputError(f"expected a (B, 1, H, W) tensor, got {tuple(images.shape)}")
        return list(images[:, 0])
    return list(images)


def _single(image: Any) -> torch.Tensor:
    """One (H, W) image as a (1, H, W) float32 tensor."""
    tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image, dtype=np.float32))
    if tensor.ndim != 2:
        raise InputError(f"expected a greyscale (H, W) image, got shape {tuple(tensor.shape)}")
    return tensor.float()[None]
