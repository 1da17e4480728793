"""Typed settings shared across the toolkit, and the dataset presets with the MedSign paper's loss weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medsign_forensics.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
DEFAULT_EXTRACTOR_DIR = WEIGHTS_DIR / "extractor"  # the shipped extractor: what verify reads and decoders train against
REPO_DIR = PACKAGE_DIR.parent
DEFAULT_KEY_BITS = 48
SUPPORTED_KEY_BITS = (32, 48, 64)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the decoder fine-tuning objective (MedSign eq. 2)."""

    img: float
    msg: float
    tv: float
    pre: float


@dataclass(frozen=True)
class DatasetPreset:
    """What `medsign train --dataset NAME` starts from."""

    name: str
    weights: LossWeights
    learning_rate: float = 5e-4
    epochs: int = 2


# MedSign section 3, "Implementation Details".
PRESETS: dict[str, DatasetPreset] = {
    "cxr": DatasetPreset("cxr", LossWeights(img=2.1, msg=7.5, tv=3.0, pre=975.0)),
    "fundus": DatasetPreset("fundus", LossWeights(img=1.9, msg=6.0, tv=10.0, pre=800.0)),
}


def preset(name: str) -> DatasetPreset:
    """Return the preset called ``name`` or say which ones exist."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise InputError(f"unknown dataset preset {name!r}; choose one of: {known}") from None
