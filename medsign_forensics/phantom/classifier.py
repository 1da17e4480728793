"""The finding classifier: a small CNN that judges which findings a chest image shows, and on which side.

It plays the role the TorchXRayVision classifier plays in the MedSign paper (Table 2: the absolute change of
classifier confidence between a watermarked and an original image), whose weights cannot be obtained here.
It is trained on phantom renders (see :mod:`medsign_forensics.phantom.classifier_train`) and its penultimate
features also feed the Fréchet distance between generated and rendered images.

Labels are multi-label over (finding kind x patient side) plus side-less cardiomegaly, in the fixed order
:data:`LABELS`. Sides are the PATIENT's: ``effusion_right`` is an effusion in the IMAGE-LEFT half.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsign_forensics import __version__
from medsign_forensics.config import WEIGHTS_DIR
from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import write_json
from medsign_forensics.reports.findings import Finding, FindingKind, Side
from medsign_forensics.training.weights import load_state, load_tensors, read_json_manifest, save_tensors

DEFAULT_CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _build_labels() -> tuple[str, ...]:
    labels: list[str] = []
    for kind in FindingKind:
        if kind.lateralised:
            labels += [f"{kind.value}_{Side.RIGHT.value}", f"{kind.value}_{Side.LEFT.value}"]
        else:
            labels.append(kind.value)
    return tuple(labels)


#: The label order of every probability vector: FindingKind declaration order, right before left for each
#: lateralised kind (nodule_right, nodule_left, mass_right, ..., cardiomegaly, ..., emphysema_left).
LABELS: tuple[str, ...] = _build_labels()
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


def label_name(kind: FindingKind, side: Side | None = None) -> str:
    """The label of ``kind`` on the patient's ``side`` (``side`` is ignored for cardiomegaly)."""
    if not kind.lateralised:
        return kind.value
    if side not in (Side.RIGHT, Side.LEFT):
        raise InputError(f"label of {kind.value} needs the patient's side right or left, not {side}")
    return f"{kind.value}_{side.value}"


def encode_labels(findings: Iterable[Finding]) -> np.ndarray:
    """Multi-hot float32 vector over :data:`LABELS` for the findings a report asserts.

    Negated and uncertain findings are ignored (they are not drawn). A bilateral finding sets both sides.
    A lateralised finding with an unspecified side cannot be encoded: its side is only known once a renderer
    has chosen it, so encode the rendered study's findings (:func:`study_labels`) instead.
    """
    target = np.zeros(len(LABELS), dtype=np.float32)
    for finding in findings:
        if not finding.present:
            continue
        if not finding.kind.lateralised:
            target[LABEL_INDEX[finding.kind.value]] = 1.0
            continue
        if finding.side is Side.BILATERAL:
            sides: tuple[Side, ...] = (Side.RIGHT, Side.LEFT)
        elif finding.side in (Side.RIGHT, Side.LEFT):
            sides = (finding.side,)
        else:
            raise InputError(
                f"cannot encode {finding.kind.value} with an unspecified side; "
                "encode the findings a renderer returned, whose sides are resolved"
            )
        for side in sides:
            target[LABEL_INDEX[label_name(finding.kind, side)]] = 1.0
    return target


def decode_labels(target: Sequence[float] | np.ndarray, *, threshold: float = 0.5) -> list[str]:
    """Names of the labels whose value is at least ``threshold`` (for messages and JSON)."""
    values = np.asarray(target, dtype=np.float32).reshape(-1)
    if values.shape[0] != len(LABELS):
        raise InputError(f"expected {len(LABELS)} label values, got {values.shape[0]}")
    return [LABELS[i] for i in np.flatnonzero(values >= threshold)]


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`FindingClassifier`; saved beside the weights so loading rebuilds the same net."""

    channels: tuple[int, ...] = (16, 32, 64, 96, 128)
    # Earlier stages (0 = the first after the stem) whose per-half MAX also feeds the head: small bright
    # lesions are found by small receptive fields and would otherwise have to survive every downsampling.
    max_taps: tuple[int, ...] = (0, 1, 2)
    # Stage whose output a 1x1 convolution turns into one coarse map per label (None: no map head). Trained
    # against the phantoms' lesion masks, it teaches the trunk WHERE lesions are, which image-level labels
    # alone teach very slowly for lesions of a few pixels; it also gives a coarse localisation at inference.
    map_stage: int | None = 1
    dropout: float = 0.2
    groups: int = 8
    image_size: int = 256  # the resolution it was trained at; predict() resizes other sizes to it
    labels: tuple[str, ...] = field(default=LABELS)

    def __post_init__(self) -> None:
        if len(self.channels) < 2:
            raise InputError("the classifier needs a stem and at least one stage: give two or more channel counts")
        for width in self.channels:
            if width <= 0 or width % self.groups:
                raise InputError(f"channel count {width} must be positive and divisible by groups={self.groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must lie in [0, 1), got {self.dropout}")
        last = len(self.channels) - 2  # index of the final stage, which is always pooled
        if len(set(self.max_taps)) != len(self.max_taps) or any(not 0 <= t < last for t in self.max_taps):
            raise InputError(f"max_taps must be distinct stage indices below {last}, got {self.max_taps}")
        if self.map_stage is not None and not 0 <= self.map_stage <= last:
            raise InputError(f"map_stage must be a stage index from 0 to {last} or None, got {self.map_stage}")

    @property
    def feature_dim(self) -> int:
        """Length of the penultimate vector: final stage (average, max) and tapped stages (max), per half."""
        return 4 * self.channels[-1] + sum(2 * self.channels[t + 1] for t in self.max_taps)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        return config_from_dict(cls, data)


class _Stage(nn.Module):
    """A residual block that halves the resolution: two 3x3 convolutions plus a strided 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.skip_norm = nn.GroupNorm(groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(h + self.skip_norm(self.skip(x)))


class FindingClassifier(nn.Module):
    """Multi-label CNN over :data:`LABELS` for (B, 1, H, W) images in [0, 1].

    A stride-2 5x5 stem keeps CPU cost low; each stage halves the resolution again. GroupNorm makes a
    prediction independent of what else is in the batch. The head pools each image HALF separately, because
    global pooling alone would throw away which side a lesion is on: the final stage by average and max, the
    earlier stages in ``max_taps`` by max only, so that a nodule or granuloma of a few pixels reaches the head
    from a detector with a small receptive field instead of being diluted by four downsamplings. Any input
    size works.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c = self.config.channels
        g = self.config.groups
        self.stem = nn.Sequential(
            nn.Conv2d(1, c[0], 5, stride=2, padding=2, bias=False), nn.GroupNorm(g, c[0]), nn.SiLU()
        )
        self.stages = nn.Sequential(*(_Stage(a, b, g) for a, b in zip(c[:-1], c[1:])))
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.config.feature_dim, len(self.config.labels))
        stage = self.config.map_stage
        self.map_head = None if stage is None else nn.Conv2d(c[stage + 1], len(self.config.labels), 1)

    def _trunk(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.ndim != 4 or images.shape[1] != 1:
            raise InputError(f"expected images of shape (B, 1, H, W), got {tuple(images.shape)}")
        halves = (1, 2)
        h = self.stem(images * 2.0 - 1.0)
        taps = []
        maps = None
        for index, stage in enumerate(self.stages):
            h = stage(h)
            if index in self.config.max_taps:
                taps.append(F.adaptive_max_pool2d(h, halves))
            if index == self.config.map_stage and self.map_head is not None:
                maps = self.map_head(h)
        pooled = [F.adaptive_avg_pool2d(h, halves), F.adaptive_max_pool2d(h, halves), *taps]
        return torch.cat([p.flatten(1) for p in pooled], dim=1), maps

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate vector (B, feature_dim): per image half (image left first), the final stage's average
        and max, then the max of each tapped stage."""
        return self._trunk(images)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, len(LABELS))."""
        return self.head(self.dropout(self.features(images)))

    def forward_with_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, L) and the coarse per-label map logits (B, L, h, w), or None without a map head."""
        features, maps = self._trunk(images)
        return self.head(self.dropout(features)), maps


def _to_batch(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(H, W), (B, H, W) or (B, 1, H, W), uint8 or float in [0, 1] -> float32 (B, 1, size, size)."""
    if isinstance(images, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    else:
        tensor = images
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    tensor = tensor.float()
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise InputError(f"expected greyscale images (H, W), (B, H, W) or (B, 1, H, W), got {tuple(tensor.shape)}")
    if tuple(tensor.shape[-2:]) != (size, size):
        # Lesion sizes in pixels are what the net learned; bring other resolutions to the trained one.
        tensor = F.interpolate(tensor, size=(size, size), mode="area" if tensor.shape[-1] > size else "bilinear")
    return tensor.clamp(0.0, 1.0)


def _batches(images: np.ndarray | torch.Tensor, size: int, batch_size: int) -> list[torch.Tensor]:
    """Split before converting, so thousands of uint8 images never become one huge float tensor."""
    if images.ndim in (3, 4):
        return [_to_batch(images[i : i + batch_size], size) for i in range(0, images.shape[0], batch_size)]
    return [_to_batch(images, size)]


@torch.no_grad()
def predict(
    model: FindingClassifier, images: np.ndarray | torch.Tensor, *, batch_size: int = 32
) -> np.ndarray:
    """Probabilities (B, len(LABELS)) float32, in :data:`LABELS` order, with the model in eval mode.

    ``images``: (H, W), (B, H, W) or (B, 1, H, W), uint8 or float in [0, 1]; other sizes are resized to the
    size the model was trained at.
    """
    model.eval()
    device = next(model.parameters()).device
    chunks = _batches(images, model.config.image_size, batch_size)
    out = [torch.sigmoid(model(chunk.to(device))).cpu() for chunk in chunks]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def extract_features(
    model: FindingClassifier, images: np.ndarray | torch.Tensor, *, batch_size: int = 32
) -> np.ndarray:
    """Penultimate features (B, feature_dim) float64, e.g. for a Fréchet distance between image sets."""
    model.eval()
    device = next(model.parameters()).device
    out = [model.features(chunk.to(device)).cpu() for chunk in _batches(images, model.config.image_size, batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def save_classifier(
    model: FindingClassifier, out_dir: str | Path, *, metadata: dict[str, Any] | None = None
) -> str:
    """Write ``model.safetensors`` (fp16) and ``config.json`` (architecture, labels, SHA-256); return the hash.

    The weights are written first and the config last, each atomically, so a folder whose config exists
    always names the hash of complete weights.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One metadata key only, so that equal weights hash equally (the version is recorded in config.json).
    digest = save_tensors(out_dir / WEIGHTS_FILE, model.state_dict(), dtype=torch.float16, metadata={"format": "pt"})
    write_json(
        out_dir / CONFIG_FILE,
        {
            "model": "medsign_forensics.phantom.classifier.FindingClassifier",
            "software_version": __version__,
            "config": model.config.to_dict(),
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": digest,
            "dtype": "float16",
            **(metadata or {}),
        },
    )
    return digest


def read_classifier_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a classifier folder (ModelError if missing or unreadable)."""
    return read_json_manifest(
        Path(path) / CONFIG_FILE,
        what="classifier config.json",
        hint="train one with `medsign classifier train` or pass the folder that holds model.safetensors and "
        "config.json",
    )


def load_classifier(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> FindingClassifier:
    """Load a classifier folder (default: the shipped weights) with its SHA-256 checked and strict keys.

    Raises :class:`ModelError` when the folder, config or weights are absent, the hash differs from the one
    recorded, the labels differ from :data:`LABELS`, or the tensors do not match the architecture.
    """
    folder = Path(path) if path is not None else DEFAULT_CLASSIFIER_DIR
    meta = read_classifier_config(folder)
    weights_path = folder / str(meta.get("weights_file", WEIGHTS_FILE))
    state = load_tensors(weights_path, sha256=meta.get("weights_sha256"), what="classifier weights",
                         recorded_in=CONFIG_FILE)
    try:
        config = ClassifierConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"classifier config is incomplete or invalid ({error}); retrain it", path=folder) from None
    if config.labels != LABELS:
        raise ModelError(
            "classifier was trained on a different label set than this version's LABELS; retrain it", path=folder
        )
    model = FindingClassifier(config)
    load_state(model, state, what="classifier weights", target="the architecture in config.json", path=weights_path)
    return model.to(device).eval()
