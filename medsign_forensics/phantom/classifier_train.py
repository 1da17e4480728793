"""Training and held-out evaluation of the finding classifier on phantom renders.

The run is seeded and resumable (:mod:`medsign_forensics.training`): renders are cached as shards, a checkpoint
(model, optimiser, step, random generators) is written atomically every ``checkpoint_every`` steps, the batch
order and augmentation of step ``s`` depend only on (seed, s), and every logged line goes to
``train_log.jsonl``. Held-out phantoms come from the
TEST split of the report corpus plus random findings whose renderer seeds are disjoint from training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from medsign_forensics.attacks.codec import jpeg_round_trip
from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.errors import InputError
from medsign_forensics.fileio import write_json
from medsign_forensics.phantom.classifier import (
    LABELS,
    ClassifierConfig,
    FindingClassifier,
    predict,
    save_classifier,
)
from medsign_forensics.phantom.classifier_data import (
    PhantomArrays,
    RenderSpec,
    random_specs,
    render_cached,
    render_pool,
    report_specs,
)
from medsign_forensics.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from medsign_forensics.training.environment import environment
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.training.run import RunFolder
from medsign_forensics.training.schedule import WarmupCosine

#: Labels with fewer held-out positives than this get an AUROC but are not held to the 0.95 target.
MIN_SUPPORT = 20
# Renderer seeds: training phantoms use [0, EVAL_SEED_BASE), held-out ones start here.
EVAL_SEED_BASE = 10_000_000
RANDOM_SEED_OFFSET = 5_000_000
TASK = "training classifier"


@dataclass(frozen=True)
class Augmentation:
    """Mild photometric changes, so the judge is not brittle to exposure or codecs yet sees lesion changes."""

    gain: float = 0.12  # contrast x (1 +- gain)
    offset: float = 0.05  # brightness +- offset
    gamma: float = 0.2  # gamma in [1/(1+gamma), 1+gamma]
    noise_max: float = 0.02  # Gaussian noise sigma drawn from [0, noise_max]
    jpeg_p: float = 0.3  # probability of a JPEG round trip
    jpeg_quality: tuple[int, int] = (60, 95)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded beside the weights)."""

    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    reports: str | None = "open-i"  # report corpus for realistic finding lists; None: random findings only
    test_fraction: float = 0.1
    split_seed: int = 0
    report_repeats: int = 1  # renders per training report (different renderer seeds)
    n_random: int = 7000  # random-finding training phantoms (the shipped weights' setting)
    eval_report_repeats: int = 1
    n_random_eval: int = 1200
    steps: int = 4500  # the shipped weights' schedule: 1,400 steps left nodules at AUROC 0.72 (BENCHMARKS.md)
    batch_size: int = 32
    mask_weight: float = 1.0  # weight of the lesion-map loss (0: image-level labels only)
    mask_pos_weight: float = 10.0  # lesion cells are rare: weigh them up in the map loss
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    workers: int = 2
    checkpoint_every: int = 250
    log_every: int = 25
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise InputError("steps and batch_size must be positive")
        if self.report_repeats < 0 or self.n_random < 0 or self.n_random_eval < 0:
            raise InputError("image counts must not be negative")
        if self.mask_weight > 0 and self.model.map_stage is None:
            raise InputError("mask_weight > 0 needs a classifier with a map head: set model.map_stage")

    @property
    def size(self) -> int:
        return self.model.image_size

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)

    @classmethod
    def tiny(cls) -> TrainConfig:
        """A config that renders and trains in seconds on CPU, for tests (the renderer's smallest size is 256)."""
        return cls(
            model=ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), map_stage=0, groups=4),
            reports=None,
            n_random=16,
            n_random_eval=12,
            steps=4,
            batch_size=8,
            warmup_steps=1,
            workers=1,
            checkpoint_every=2,
            log_every=1,
        )


def augment(images: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Photometric augmentation of a (B, 1, H, W) batch in [0, 1], drawn from ``generator`` only."""
    b = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator)).to(images.dtype)

    x = images
    gamma = torch.exp(uniform(-math.log1p(aug.gamma), math.log1p(aug.gamma)))
    x = x.clamp_min(1e-6) ** gamma
    x = (x - 0.5) * uniform(1 - aug.gain, 1 + aug.gain) + 0.5 + uniform(-aug.offset, aug.offset)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, aug.noise_max)
    x = x.clamp(0.0, 1.0)
    jpeg = torch.rand(b, generator=generator) < aug.jpeg_p
    qualities = torch.randint(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1, (b,), generator=generator)
    for i in torch.nonzero(jpeg).flatten().tolist():
        x[i, 0] = torch.from_numpy(jpeg_round_trip(x[i, 0].numpy(), int(qualities[i])).astype(np.float32) / 255.0)
    return x


def _batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of step ``step``: epochs are seeded permutations, so any step is reproducible on resume."""
    per_epoch = max(1, n // batch_size)
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[position * batch_size : (position + 1) * batch_size]


def schedule(config: TrainConfig) -> WarmupCosine:
    """Linear warm-up then cosine decay to 5% of the peak rate."""
    return WarmupCosine(total=config.steps, warmup=config.warmup_steps, floor=0.05)


def train_step(
    model: FindingClassifier,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    mask_weight: float = 0.0,
    mask_pos_weight: float = 1.0,
) -> tuple[float, float]:
    """One step of label BCE plus ``mask_weight`` x the label-map BCE against coarse lesion ``masks``
    (B, L, g, g); returns (label loss, map loss) before the update (map loss 0 without masks)."""
    model.train()
    logits, maps = model.forward_with_maps(images)
    label_loss = F.binary_cross_entropy_with_logits(logits, targets)
    map_loss = torch.zeros(())
    if masks is not None and mask_weight > 0:
        if maps is None:
            raise InputError("mask supervision needs a classifier with a map head (map_stage is None)")
        truth = masks.float()
        if truth.shape[-2:] != maps.shape[-2:]:
            truth = (
                F.adaptive_max_pool2d(truth, maps.shape[-2:])
                if truth.shape[-1] > maps.shape[-1]
                else F.interpolate(truth, size=maps.shape[-2:], mode="nearest")
            )
        weight = torch.tensor(mask_pos_weight, device=maps.device)
        map_loss = F.binary_cross_entropy_with_logits(maps, truth, pos_weight=weight)
    loss = label_loss + mask_weight * map_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(label_loss.detach()), float(map_loss.detach())


def build_specs(config: TrainConfig) -> tuple[list[RenderSpec], list[RenderSpec]]:
    """(training specs, held-out specs): report TRAIN split + random findings; report TEST split + random.

    Renderer seeds of the two sets never overlap (training below EVAL_SEED_BASE, held-out above it).
    """
    train: list[RenderSpec] = []
    held_out: list[RenderSpec] = []
    if config.reports:
        from medsign_forensics.reports import load_reports, split_reports

        train_reports, test_reports = split_reports(
            load_reports(config.reports), test_fraction=config.test_fraction, seed=config.split_seed
        )
        train += report_specs(train_reports, repeats=config.report_repeats, seed_base=0)
        held_out += report_specs(test_reports, repeats=config.eval_report_repeats, seed_base=EVAL_SEED_BASE)
    train += random_specs(config.n_random, seed_base=RANDOM_SEED_OFFSET, rng_seed=config.seed)
    held_out += random_specs(
        config.n_random_eval, seed_base=EVAL_SEED_BASE + RANDOM_SEED_OFFSET, rng_seed=config.seed + 1
    )
    return train, held_out


@dataclass
class LabelScore:
    """Held-out AUROC of one label with its support (None when only one class is present)."""

    label: str
    auroc: float | None
    positives: int
    negatives: int

    @property
    def enough_support(self) -> bool:
        return self.positives >= MIN_SUPPORT and self.negatives >= MIN_SUPPORT


def evaluate(model: FindingClassifier, data: PhantomArrays, *, batch_size: int = 64) -> list[LabelScore]:
    """AUROC per label (sklearn ``roc_auc_score``) on held-out phantoms, with positive/negative counts."""
    probabilities = predict(model, data.images, batch_size=batch_size)
    scores = []
    for j, label in enumerate(LABELS):
        truth = data.labels[:, j] > 0.5
        positives = int(truth.sum())
        negatives = int(truth.size - positives)
        auroc = float(roc_auc_score(truth, probabilities[:, j])) if positives and negatives else None
        scores.append(LabelScore(label, auroc, positives, negatives))
    return scores


def held_out_data(
    config: TrainConfig, cache_dir: str | Path, *, workers: int | None = None, progress: ProgressFn | None = None
) -> PhantomArrays:
    """The held-out phantoms of ``config`` (rendered into, or read back from, ``cache_dir``)."""
    _, eval_specs = build_specs(config)
    return render_cached(
        eval_specs, cache_dir, size=config.size, workers=config.workers if workers is None else workers,
        progress=progress, task="rendering held-out phantoms",
    )


@dataclass
class TrainResult:
    """What a finished run produced and measured."""

    weights_dir: Path
    weights_sha256: str
    scores: list[LabelScore]
    final_loss: float
    train_images: int
    eval_images: int
    render_cpu_seconds: float  # summed over rendering processes
    train_seconds: float  # wall time of the training loop
    train_cpu_seconds: float  # CPU time of the training loop (all threads)


def train_classifier(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    command: str | None = None,
) -> TrainResult:
    """Render (cached), train, evaluate and save a classifier under ``out_dir``.

    ``out_dir`` receives ``cache/train``, ``cache/eval`` (uint8 render shards), ``checkpoint.pt``,
    ``train_log.jsonl``, ``eval.json`` and ``weights/`` (``model.safetensors`` fp16 + ``config.json``).
    Running again with the same config resumes from the last checkpoint; a different config is refused.
    ``command`` (the command line that started the run) is recorded in the weights' config.json. ``progress``
    receives the rendering and training events (the step's loss at log steps).
    """
    run = RunFolder(out_dir, resume=None)
    out = run.path
    torch.manual_seed(config.seed)
    train_specs, eval_specs = build_specs(config)
    # One pool for both sets: every phantom of the run comes from the same imported renderer code (a worker
    # whose code differs from a cache's stamp is refused by render_cached).
    pool = render_pool(config.workers)
    try:
        train_data = render_cached(
            train_specs, out / "cache" / "train", size=config.size, workers=config.workers, pool=pool,
            progress=progress, task="rendering training phantoms",
        )
        eval_data = render_cached(
            eval_specs, out / "cache" / "eval", size=config.size, workers=config.workers, pool=pool,
            progress=progress, task="rendering held-out phantoms",
        )
    finally:
        if pool is not None:
            pool.terminate()
    render_cpu_seconds = train_data.render_cpu_seconds + eval_data.render_cpu_seconds
    renderer_sha256 = (out / "cache" / "train" / "renderer.sha256").read_text().strip()

    model = FindingClassifier(config.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_step = 0
    previous_seconds = previous_cpu_seconds = 0.0  # wall and CPU seconds of earlier, interrupted calls
    if run.resuming:
        state = load_checkpoint(run.marker, device=device)
        run.check_config(state["config"], config.to_dict())
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        previous_seconds = float(state["elapsed"])
        previous_cpu_seconds = float(state["cpu_elapsed"])
        restore_rng(state["rng"])  # dropout continues exactly as an uninterrupted run would
    run.restart_log(start_step)
    run.log.append({
        "event": "start", "step": start_step, "config": config.to_dict(), "train_images": len(train_data.images),
        "eval_images": len(eval_data.images), "render_cpu_seconds": round(render_cpu_seconds, 1),
        "environment": environment(device),
    })

    images = torch.from_numpy(train_data.images)
    targets = torch.from_numpy(train_data.labels)
    rates = schedule(config)
    loss_value = map_value = float("nan")
    started = time.perf_counter()
    cpu_started = time.process_time()
    window: list[tuple[float, float]] = []
    notify(progress, TASK, start_step, config.steps)
    for step in range(start_step, config.steps):
        lr = rates.apply(optimizer, config.lr, step)
        index = torch.from_numpy(_batch_indices(len(images), step, config.batch_size, config.seed))
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = augment(images[index].float().div_(255.0)[:, None], config.augmentation, generator)
        masks = torch.from_numpy(train_data.label_masks(index.numpy())) if config.mask_weight > 0 else None
        loss_value, map_value = train_step(
            model, optimizer, batch.to(device), targets[index].to(device),
            None if masks is None else masks.to(device),
            mask_weight=config.mask_weight, mask_pos_weight=config.mask_pos_weight,
        )
        window.append((loss_value, map_value))
        done = step + 1
        metrics: dict[str, float] = {}
        if done % config.log_every == 0 or done == config.steps:
            label_mean = sum(w[0] for w in window) / len(window)
            map_mean = sum(w[1] for w in window) / len(window)
            run.log.append({"event": "step", "step": done, "loss": round(label_mean, 5),
                            "map_loss": round(map_mean, 5), "lr": lr,
                            "seconds": round(previous_seconds + time.perf_counter() - started, 1)})
            metrics = {"loss": label_mean}
            window.clear()
        notify(progress, TASK, done, config.steps, metrics)
        if done % config.checkpoint_every == 0 or done == config.steps:
            elapsed = previous_seconds + time.perf_counter() - started
            cpu_elapsed = previous_cpu_seconds + time.process_time() - cpu_started
            save_checkpoint(run.marker, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "step": done, "config": config.to_dict(), "elapsed": elapsed,
                                         "cpu_elapsed": cpu_elapsed})
    train_seconds = previous_seconds + time.perf_counter() - started
    train_cpu_seconds = previous_cpu_seconds + time.process_time() - cpu_started

    model.eval()
    scores = evaluate(model, eval_data)
    write_json(out / "eval.json", {
        "labels": [asdict(s) | {"enough_support": s.enough_support} for s in scores],
        "min_support": MIN_SUPPORT,
        "eval_images": len(eval_data.images),
    })
    digest = save_classifier(model, out / "weights", metadata={
        "train_config": config.to_dict(),
        "train_images": len(train_data.images),
        "steps": config.steps,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "command": command,
        "renderer_sha256": renderer_sha256,
        "torch_version": torch.__version__,
        "device": str(device),
        "environment": environment(device),
        "held_out_auroc": {s.label: s.auroc for s in scores},
        "held_out_positives": {s.label: s.positives for s in scores},
    })
    run.log.append({
        "event": "done", "step": config.steps, "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1), "weights_sha256": digest,
    })
    return TrainResult(
        weights_dir=out / "weights", weights_sha256=digest, scores=scores, final_loss=loss_value,
        train_images=len(train_data.images), eval_images=len(eval_data.images),
        render_cpu_seconds=render_cpu_seconds, train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds,
    )
