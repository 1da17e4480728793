"""Stage-1 training (MedSign section 2.1): HiDDeN encoder + extractor through a transformation layer.

Each step: random crops of unwatermarked images, random keys, the encoder embeds them, the result is rounded
to 8 bits (it will be stored as an 8-bit file), ONE attack drawn from the configured set transforms the whole
batch (its differentiable form), and the extractor's raw logits are scored with BCE against the keys:
``BCE(logits / temperature, keys)``, with the temperature an explicit setting (1.0 by default). No image loss:
the encoder is thrown away after training.

Everything random comes from one numpy Generator and torch's seeded generator, both saved in the checkpoint
(:mod:`medsign_forensics.training`), so an interrupted run resumed from its last checkpoint continues exactly as
if it had not stopped.

Output folder: ``extractor.safetensors``/``.json`` (with the whitening layer if fitted), ``encoder.*``,
``config.json``, ``SHA256SUMS``, ``train_log.jsonl``, ``checkpoint.pt``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError
from medsign_forensics.fileio import sha256_file, write_json, write_text
from medsign_forensics.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from medsign_forensics.training.environment import environment
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.training.run import RunFolder
from medsign_forensics.training.schedule import WarmupCosine
from medsign_forensics.watermark.data import (
    FolderSource,
    ImageSource,
    PhantomSource,
    TrainingBatches,
    centre_square,
)
from medsign_forensics.watermark.extractor_io import save_encoder, save_extractor
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenEncoder, HiddenExtractor
from medsign_forensics.watermark.whitening import Whitening, whiten_extractor

PHANTOM = "phantom"
TASK = "stage 1: extractor"
# Disjoint phantom seed ranges: training, whitening fit, held-out evaluation.
TRAIN_SEED_BASE = 0
WHITEN_SEED_BASE = 500_000
EVAL_SEED_BASE = 1_000_000

DEFAULT_ATTACKS: tuple[str, ...] = (
    "none",
    "brightness_x2",
    "brightness_x0.6",
    "contrast_x0.6",
    "gamma_0.7",
    "crop_random_area0.5",
    "crop_random_area0.3",
    "resize_edge0.7",
    "resize_edge0.5",
    "rotate_25",
    "rotate_-15",
    "jpeg_q50",
    "jpeg_q80",
    "blur_sigma1_k5",
    "noise_sigma0.02",
    "dicomwl_c1800_w3000",
)

# Fields that may change when resuming (they do not alter what has been trained so far).
_RESUMABLE_CHANGES = frozenset(
    {"steps", "device", "log_every", "checkpoint_every", "whiten_images", "recalibrate_batches"}
)


@dataclass(frozen=True)
class ExtractorTrainConfig:
    """Everything that defines a stage-1 run; saved as config.json beside the weights."""

    data: str  # "phantom" or a folder of images
    steps: int = 20_000
    batch: int = 16
    size: int = 128
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    # Steps at the start trained with no attack, so that encoder and extractor agree on a code before the
    # attacks make the task harder (HiDDeN sits near 50 % bit accuracy for a long time otherwise).
    clean_steps: int = 0
    lr: float = 1e-3
    warmup_steps: int = 500
    min_lr_ratio: float = 0.02
    weight_decay: float = 1e-4
    loss_temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    phantom_count: int = 2000
    log_every: int = 10
    checkpoint_every: int = 200
    whiten_images: int = 0
    whiten_size: int = 256
    # Batches (of `batch` images at `whiten_size`) over which BatchNorm statistics are re-estimated after
    # training, under a mixture of the configured attacks; 0 keeps the running averages of training.
    recalibrate_batches: int = 64
    model: HiddenConfig = field(default_factory=HiddenConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.size < 32:
            raise InputError(f"need steps >= 1, batch >= 1, size >= 32; got {self.steps}, {self.batch}, {self.size}")
        if not self.attacks:
            raise InputError("the attack set is empty; give at least one attack name (e.g. none)")
        for name in self.attacks:
            get_attack(name)  # fails early on a misspelt name
        if not 0 <= self.clean_steps <= self.steps:
            raise InputError(f"clean_steps must lie in 0..steps, got {self.clean_steps}")
        if self.lr <= 0 or self.loss_temperature <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InputError("lr and loss_temperature must be positive and min_lr_ratio in [0, 1]")
        if self.whiten_images and self.whiten_images <= self.model.bits:
            raise InputError(
                f"whitening {self.model.bits} outputs needs more than {self.model.bits} images; "
                f"got --whiten-images {self.whiten_images}"
            )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractorTrainConfig:
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class StepRecord:
    """What one logging window reports (mean over its steps)."""

    step: int
    lr: float
    loss: float
    bit_accuracy: float
    seconds_per_step: float
    per_attack_accuracy: dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    last: StepRecord | None
    extractor_sha256: str
    whitening: dict[str, object] | None


def schedule(config: ExtractorTrainConfig) -> WarmupCosine:
    """Linear warm-up (at most a tenth of the run), then cosine decay to ``min_lr_ratio``."""
    return WarmupCosine(total=config.steps, warmup=min(config.warmup_steps, config.steps // 10),
                        floor=config.min_lr_ratio)


def make_source(config: ExtractorTrainConfig) -> ImageSource:
    if config.data == PHANTOM:
        return PhantomSource(config.phantom_count, size=256, seed_base=TRAIN_SEED_BASE, findings_seed=config.seed)
    return FolderSource(Path(config.data))


def message_loss(logits: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """BCE between keys (0/1) and ``logits / temperature``, mean over bits and images."""
    return F.binary_cross_entropy_with_logits(logits / temperature, keys)


class _Trainer:
    def __init__(self, config: ExtractorTrainConfig, out: Path) -> None:
        self.config, self.out = config, out
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.encoder = HiddenEncoder(config.model).to(self.device)
        self.extractor = HiddenExtractor(config.model).to(self.device)
        params = list(self.encoder.parameters()) + list(self.extractor.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = schedule(config)
        self.attacks = [get_attack(name) for name in config.attacks]
        self.store = Requantize(8)
        self.identity = get_attack("none")
        self.step = 0

    # --- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        state = {
            "config": self.config.to_dict(),
            "step": self.step,
            "encoder": self.encoder.state_dict(),
            "extractor": self.extractor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(path, state, numpy_rngs={"data": self.rng})

    def load_checkpoint(self, run: RunFolder) -> None:
        state = load_checkpoint(run.marker, device=self.device)
        run.check_config(state["config"], self.config.to_dict(), resumable=_RESUMABLE_CHANGES)
        self.encoder.load_state_dict(state["encoder"], strict=True)
        self.extractor.load_state_dict(state["extractor"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], numpy_rngs={"data": self.rng})
        self.step = int(state["step"])

    # --- training ----------------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor) -> tuple[float, float, str]:
        self.encoder.train()
        self.extractor.train()
        self.schedule.apply(self.optimizer, self.config.lr, self.step)
        keys_np = self.rng.integers(0, 2, size=(images.shape[0], self.config.model.bits))
        keys = torch.from_numpy(keys_np.astype(np.float32)).to(self.device)
        attack = self.attacks[int(self.rng.integers(len(self.attacks)))]
        if self.step < self.config.clean_steps:
            attack = self.identity
        watermarked = self.store.differentiable(self.encoder(images.to(self.device), keys))
        logits = self.extractor.raw_logits(attack.differentiable(watermarked, self.rng))
        loss = message_loss(logits, keys, self.config.loss_temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = ((logits.detach() > 0).float() == keys).float().mean().item()
        return loss.item(), accuracy, attack.name


def recalibrate_batchnorm(trainer: _Trainer, source: ImageSource) -> None:
    """Re-estimate the extractor's BatchNorm statistics as a plain average over a mixture of attacks.

    During training every batch carries ONE attack, so each batch is normalised by statistics of that attack
    alone, and the running averages are dominated by the last few hundred batches at the training crop size.
    Verification sees single images of any provenance at the working resolution: half of each batch here is
    watermarked and half is clean, each batch gets an attack drawn from the training set, and the statistics
    are the cumulative mean over all batches (``momentum=None``), at ``whiten_size``.
    """
    config, extractor = trainer.config, trainer.extractor
    norms = [m for m in extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms or config.recalibrate_batches <= 0:
        return
    saved_momentum = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    batches = TrainingBatches(source, size=config.whiten_size, batch=config.batch, rng=trainer.rng)
    trainer.encoder.eval()
    extractor.train()
    with torch.no_grad():
        for _ in range(config.recalibrate_batches):
            images = next(batches).to(trainer.device)
            keys = torch.from_numpy(trainer.rng.integers(0, 2, size=(images.shape[0], config.model.bits)))
            marked = trainer.store.differentiable(trainer.encoder(images, keys.float().to(trainer.device)))
            half = images.shape[0] // 2
            mixed = torch.cat([marked[:half], images[half:]])
            attack = trainer.attacks[int(trainer.rng.integers(len(trainer.attacks)))]
            extractor.raw_logits(attack.differentiable(mixed, trainer.rng))
    for module, momentum in zip(norms, saved_momentum):
        module.momentum = momentum
    extractor.eval()


def _whitening_batches(config: ExtractorTrainConfig, source: ImageSource) -> list[torch.Tensor]:
    """Unwatermarked images at the working resolution, disjoint from training for phantoms."""
    if config.data == PHANTOM:
        source = PhantomSource(
            config.whiten_images, size=config.whiten_size, seed_base=WHITEN_SEED_BASE, findings_seed=config.seed + 1
        )
    count = min(config.whiten_images, len(source))
    if count <= config.model.bits:
        raise InputError(
            f"whitening needs more than {config.model.bits} unwatermarked images but the data has {len(source)}"
        )
    images = [centre_square(source.image(i), config.whiten_size) for i in range(count)]
    stacked = torch.from_numpy(np.stack(images)[:, None])
    return list(torch.split(stacked, 32))


def fit_and_save_whitening(
    out: Path, extractor: HiddenExtractor, config: ExtractorTrainConfig, source: ImageSource
) -> Whitening:
    """Fit whitening on unwatermarked images and re-save the extractor with it."""
    fit = whiten_extractor(extractor, _whitening_batches(config, source))
    save_extractor(extractor.cpu(), out, whitening=fit.summary(), training=_provenance(config))
    _write_sums(out)
    return fit


def _provenance(config: ExtractorTrainConfig) -> dict[str, Any]:
    return {"stage": "extractor", "steps": config.steps, "data": config.data, "seed": config.seed,
            "environment": environment(config.device)}


def _write_sums(out: Path) -> None:
    lines = [f"{sha256_file(out / name)}  {name}\n" for name in ("extractor.safetensors", "encoder.safetensors")]
    write_text(out / "SHA256SUMS", "".join(lines))


def train_extractor(
    config: ExtractorTrainConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Run (or resume) stage-1 training into ``out``; fit whitening afterwards if ``config.whiten_images``.

    ``progress`` gets an event per step, with the window's means (loss, bit accuracy, s/step) at log steps.
    """
    run = RunFolder(out, resume=resume)
    out = run.path
    trainer = _Trainer(config, out)
    if run.resuming:
        trainer.load_checkpoint(run)
    run.restart_log(trainer.step)
    write_json(out / "config.json", config.to_dict())
    source = make_source(config)
    batches = TrainingBatches(source, size=config.size, batch=config.batch, rng=trainer.rng)

    window: dict[str, list[float]] = defaultdict(list)
    per_attack: dict[str, list[float]] = defaultdict(list)
    last: StepRecord | None = None
    started = time.perf_counter()
    while trainer.step < config.steps:
        loss, accuracy, attack = trainer.train_step(next(batches))
        trainer.step += 1
        window["loss"].append(loss)
        window["acc"].append(accuracy)
        per_attack[attack].append(accuracy)
        metrics: dict[str, float] = {}
        if trainer.step % config.log_every == 0 or trainer.step == config.steps:
            elapsed = time.perf_counter() - started
            last = StepRecord(
                step=trainer.step,
                lr=float(trainer.optimizer.param_groups[0]["lr"]),
                loss=float(np.mean(window["loss"])),
                bit_accuracy=float(np.mean(window["acc"])),
                seconds_per_step=elapsed / len(window["loss"]),
                per_attack_accuracy={k: float(np.mean(v)) for k, v in sorted(per_attack.items())},
            )
            run.log.append(asdict(last))
            metrics = {"loss": last.loss, "bit_accuracy": last.bit_accuracy, "seconds_per_step": last.seconds_per_step}
            window.clear()
            per_attack.clear()
            started = time.perf_counter()
        notify(progress, TASK, trainer.step, config.steps, metrics)
        if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
            trainer.save_checkpoint(run.marker)

    recalibrate_batchnorm(trainer, source)
    extractor = trainer.extractor.cpu().eval()
    save_encoder(trainer.encoder.cpu().eval(), out, training=_provenance(config))
    save_extractor(extractor, out, training=_provenance(config))
    _write_sums(out)
    fit = fit_and_save_whitening(out, extractor, config, source) if config.whiten_images else None
    return TrainResult(
        out=out,
        steps=trainer.step,
        last=last,
        extractor_sha256=sha256_file(out / "extractor.safetensors"),
        whitening=None if fit is None else fit.summary(),
    )
