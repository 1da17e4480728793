"""Saving, loading and running the HiDDeN extractor (and its encoder) as verified safetensors files.

A model folder holds ``extractor.safetensors`` and ``extractor.json`` (and the same pair for ``encoder``). The
JSON manifest records the architecture config, the SHA-256 of the weights file, the whitening fit if any, and
the software version. Loading rebuilds the module from the config, checks the hash, and loads with strict key
checking, so a truncated, swapped or mismatched file fails loudly (ModelError) instead of running with random
weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medsign_forensics import __version__
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import atomic_path, sha256_file, write_json
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenEncoder, HiddenExtractor

FORMAT_VERSION = 1
EXTRACTOR_STEM = "extractor"
ENCODER_STEM = "encoder"


def _save_module(module: torch.nn.Module, folder: Path, stem: str, manifest: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": f"medsign-hidden-{stem}"})
        sha = sha256_file(tmp)
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
    if not manifest_path.is_file():
        raise ModelError(f"no {stem}.json manifest found; point to a folder written by save_{stem}", path=folder)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"the manifest cannot be read ({error}); re-save the model", path=manifest_path) from None
    if manifest.get("format") != f"medsign-hidden-{stem}" or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"this is not a version-{FORMAT_VERSION} medsign {stem} manifest; re-save it with this software",
            path=manifest_path,
        )
    return folder, manifest


def _load_state(module: torch.nn.Module, folder: Path, manifest: dict[str, Any]) -> None:
    weights = folder / str(manifest.get("weights", ""))
    if not weights.is_file():
        raise ModelError("the weights file named in the manifest is missing", path=weights)
    sha = sha256_file(weights)
    if sha != manifest.get("sha256"):
        raise ModelError(
            f"SHA-256 {sha[:16]}... does not match the recorded {str(manifest.get('sha256'))[:16]}...; "
            "the file is corrupt or was replaced: restore it from the original training output",
            path=weights,
        )
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises several types for a bad header
        raise ModelError(f"the weights cannot be read ({error})", path=weights) from None
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(
            f"weights do not fit the recorded architecture (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "the manifest and weights come from different models",
            path=weights,
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"weights do not fit the recorded architecture: {error}", path=weights) from None


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


def load_extractor(path: Path, *, device: str | torch.device = "cpu") -> HiddenExtractor:
    """Load a verified extractor in eval mode from a folder (or its manifest or weights path)."""
    folder, manifest = _read_manifest(Path(path), EXTRACTOR_STEM)
    extractor = _build(HiddenExtractor, manifest, folder)
    if manifest.get("whitening") is not None:
        extractor.add_empty_whitening()
    _load_state(extractor, folder, manifest)
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
    _load_state(encoder, folder, manifest)
    return encoder.to(device).eval()


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
        by_size.setdefault(tuple(np.shape(image)), []).append(index)  # type: ignore[arg-type]
    batches = []
    for indices in by_size.values():
        for i in range(0, len(indices), batch_size):
            chunk = indices[i : i + batch_size]
            stacked = np.stack([np.asarray(images[j], dtype=np.float32) for j in chunk])[:, None]
            batches.append((chunk, torch.from_numpy(stacked)))
    return batches


@torch.inference_mode()
def extract_bits(
    extractor: HiddenExtractor,
    images: torch.Tensor | Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    raw: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Extract keys from greyscale images: returns (bits uint8 (N, k), logits float32 (N, k)).

    ``images`` is a (B, 1, H, W) tensor or a sequence of float32 (H, W) arrays in [0, 1] of any sizes. The
    logits are whitened when the extractor carries whitening, unless ``raw`` asks for the pre-whitening ones.
    """
    extractor.eval()
    device = extractor.head.weight.device
    n = len(images)
    logits = np.zeros((n, extractor.config.bits), dtype=np.float32)
    run = extractor.raw_logits if raw else extractor
    for indices, batch in _as_batches(images, batch_size):
        # channels_last roughly doubles oneDNN convolution throughput on CPU.
        batch = batch.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
        logits[indices] = run(batch).float().cpu().numpy()
    return (logits > 0).astype(np.uint8), logits
