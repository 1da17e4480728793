"""Stage 2 of MedSign (section 2.2.2): fine-tune the VAE decoder D_w so that every image it decodes carries the
deployment's key, while staying close to the original decoder D_o and away from the pathology.

Two phases:

1. **Cache.** The frozen base model samples every training report once with the cross-attention capture
   installed; x0, I_o = D_o(x0) and the localization map A_loc in every ablation's variant are stored
   (:class:`~medsign_forensics.localization.cache.LatentCache`, shared with evaluation).
2. **Fine-tuning.** D_w starts as a copy of D_o (or, against the spectral extractor, a watermark layer after the
   frozen decoder trains); one step is :meth:`~medsign_forensics.watermark.decoder_trainer.DecoderTrainer.train_step`.

   Attacks during fine-tuning: Stable Signature applies none (its extractor is already robust); MedSign does not
   say. We apply one per batch, drawn uniformly from a set that covers the Table 1 conditions, because the
   decoder must learn a pattern the extractor still reads after them (Stable Signature's fine-tuned decoders are
   much weaker than their extractors under crops and JPEG). The set is a config field, so both choices can be
   trained and compared with ``medsign evaluate --ablations``.

The run folder is the deployment folder: ``checkpoint.pt`` (resumable, :mod:`medsign_forensics.training`),
``train_log.jsonl`` and, at the end, the deployment itself. Ablations (:class:`Ablation`): ``no-cas`` and
``no-aas`` train on the maps made without CAS or AAS; ``no-tv`` and ``no-pre`` zero a loss weight;
``stable-signature`` uses no map, no L_pre and no L_tv.

At the end, the deployment is measured on held-out reports (``eval_reports``, sampled into the same cache with
held-out seeds): PSNR against D_o and blind bit accuracy after every Table-1 attack's exact form, stored in
``metrics.held_out``; ``medsign generate`` refuses a deployment whose clean accuracy cannot reach attribution.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsign_forensics.localization.cache import DEFAULT_REPORTS, CacheItem, LatentCache, MapVariant, split_items
from medsign_forensics.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from medsign_forensics.training.environment import environment
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.training.run import RunFolder
from medsign_forensics.watermark.decoder_config import RESUMABLE_CHANGES, Ablation, DecoderTrainConfig
from medsign_forensics.watermark.decoder_trainer import (
    DecoderTrainer,
    batch_indices,
    lr_factor,
    measure_held_out,
    total_steps,
)
from medsign_forensics.watermark.deployment import (
    EMBEDDED,
    FINETUNED,
    LOG_FILE,
    DeploymentKey,
    read_manifest,
    save_deployment,
)

CACHE_TASK = "sampling x0 + A_loc"
TRAIN_TASK = "fine-tuning D_w"


@dataclass(frozen=True)
class StepRecord:
    """One logging window (means over its steps). Loss terms are unweighted; ``total`` is weighted."""

    step: int
    epoch: float
    lr: float
    loss: dict[str, float]
    bit_accuracy: float
    psnr: float
    seconds_per_step: float
    attacks: dict[str, float]  # bit accuracy per attack seen in the window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DecoderTrainResult:
    out: Path
    steps: int
    items: int
    last: StepRecord | None
    decoder_sha256: str
    cache_seconds: float
    train_seconds: float
    seconds_per_step: float | None
    layer: str = FINETUNED
    held_out: dict[str, Any] | None = None


def _base_model_info(model: Any) -> dict[str, str]:
    return {
        "name": model.name,
        "path": EMBEDDED if model.is_default else str(model.path),
        "weights_sha256": model.weights_sha256,
    }


def _identity(config: dict[str, Any], layer: str, context: dict[str, str]) -> dict[str, Any]:
    """What a checkpoint must agree on to be continued: the config, what it trains and what it trains against."""
    return {**config, "layer": layer, **context}


def train_decoder(
    config: DecoderTrainConfig,
    *,
    model: Any,
    extractor: str | Path,
    key: DeploymentKey,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    items: Sequence[CacheItem] | None = None,
    eval_items: Sequence[CacheItem] | None = None,
    resume: bool = False,
    name: str | None = None,
    progress: ProgressFn | None = None,
) -> DecoderTrainResult:
    """Build (or reuse) the cache, fine-tune D_w, and write the deployment folder ``out_dir``.

    ``model`` is a loaded DiffusionModel; ``extractor`` the folder of a whitened extractor (loaded verified).
    ``items`` overrides the reports of ``config.reports`` (tests, custom lists); ``eval_items`` the held-out
    reports measured at the end (by default ``config.eval_reports`` held-out reports of ``config.reports``,
    none when ``items`` is given). ``cache_dir`` defaults to ``out_dir/cache``; give several runs (ablations)
    the same one so that sampling happens once. ``progress`` receives the cache's and the steps' events.
    """
    from medsign_forensics.config import DEFAULT_EXTRACTOR_DIR
    from medsign_forensics.watermark.extractor_io import extractor_manifest, load_extractor

    run = RunFolder(out_dir, resume=resume, log=LOG_FILE)
    out = run.path
    extractor_module = load_extractor(Path(extractor), device=config.device)
    extractor_path = Path(extractor).resolve()
    extractor_info = {"path": EMBEDDED if extractor_path == DEFAULT_EXTRACTOR_DIR.resolve() else str(extractor_path),
                      "sha256": str(extractor_manifest(Path(extractor))["sha256"])}
    if eval_items is None and items is None and config.eval_reports:
        eval_items = split_items(config.reports, held_out=True, n=config.eval_reports, seed=config.seed)
    if items is None:
        items = split_items(config.reports, held_out=False, n=config.n_reports, seed=config.seed)
    cache = LatentCache(Path(cache_dir) if cache_dir is not None else out / "cache")
    started = time.perf_counter()
    reference = copy.deepcopy(model.vae).to(model.device).float().eval()
    sampling = dict(reference_vae=reference, steps=config.sample_steps, guidance_scale=config.guidance_scale,
                    batch=config.sample_batch, progress=progress, task=CACHE_TASK)
    data = cache.build(model, items, **sampling)
    cache_seconds = time.perf_counter() - started
    eval_data = None if not eval_items else cache.build(model, eval_items, **sampling)
    del reference

    trainer = DecoderTrainer(config, model=model, extractor=extractor_module, key=key, data=data)
    context = {
        "model_weights_sha256": model.weights_sha256,
        "extractor_sha256": extractor_info["sha256"],
        "key_hex": key.key_hex,
        "items": hashlib.sha256(json.dumps([asdict(i) for i in items]).encode()).hexdigest(),
    }
    checkpoint = run.marker
    if run.resuming:
        state = load_checkpoint(checkpoint, device=trainer.device)
        saved = _identity(state["config"], state.get("layer", FINETUNED), state["context"])
        run.check_config(saved, _identity(config.to_dict(), trainer.layer_kind, context), resumable=RESUMABLE_CHANGES)
        trainer.load_state_dict(state, path=checkpoint)
        restore_rng(state["rng"])
    run.restart_log(trainer.step)

    window: dict[str, list[float]] = defaultdict(list)
    per_attack: dict[str, list[float]] = defaultdict(list)
    last: StepRecord | None = None
    train_started = time.perf_counter()
    window_started = train_started
    steps_run = 0
    notify(progress, TRAIN_TASK, trainer.step, trainer.total)
    while trainer.step < trainer.total:
        values, accuracy, psnr, attack = trainer.train_step()
        steps_run += 1
        for term, value in values.items():
            window[term].append(value)
        window["acc"].append(accuracy)
        window["psnr"].append(psnr)
        per_attack[attack].append(accuracy)
        metrics: dict[str, float] = {}
        if trainer.step % config.log_every == 0 or trainer.step == trainer.total:
            now = time.perf_counter()
            last = StepRecord(
                step=trainer.step,
                epoch=trainer.step * config.batch / len(data),
                lr=trainer.lr,
                loss={term: float(np.mean(window[term])) for term in ("img", "msg", "tv", "pre", "total")},
                bit_accuracy=float(np.mean(window["acc"])),
                psnr=float(np.mean(window["psnr"])),
                seconds_per_step=(now - window_started) / len(window["acc"]),
                attacks={name: float(np.mean(v)) for name, v in sorted(per_attack.items())},
            )
            run.log.append(last.to_dict())
            metrics = {"loss": last.loss["total"], "bit_accuracy": last.bit_accuracy, "psnr": last.psnr,
                       "seconds_per_step": last.seconds_per_step}
            window.clear()
            per_attack.clear()
            window_started = time.perf_counter()
        notify(progress, TRAIN_TASK, trainer.step, trainer.total, metrics)
        if trainer.step % config.checkpoint_every == 0 or trainer.step == trainer.total:
            save_checkpoint(checkpoint, {"config": config.to_dict(), "context": context, **trainer.state_dict()})
    train_seconds = time.perf_counter() - train_started
    seconds_per_step = train_seconds / steps_run if steps_run else None

    held_out = None if eval_data is None else measure_held_out(trainer, eval_data, seed=config.seed)

    metrics_out: dict[str, Any] = {
        "steps": trainer.step,
        "items": len(data),
        "cache_seconds": round(cache_seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "seconds_per_step": None if seconds_per_step is None else round(seconds_per_step, 4),
        "last_window": None if last is None else last.to_dict(),
        "held_out": held_out,
        "environment": environment(trainer.device),
    }
    save_deployment(
        out,
        vae=trainer.vae_w,
        head=trainer.head,
        key=key,
        base_model=_base_model_info(model),
        extractor=extractor_info,
        config=config.to_dict(),
        seed=config.seed,
        device=str(trainer.device),
        wall_time_s=cache_seconds + train_seconds,
        metrics=metrics_out,
        name=name,
    )
    return DecoderTrainResult(
        out=out,
        steps=trainer.step,
        items=len(data),
        last=last,
        decoder_sha256=str(read_manifest(out)["decoder"]["sha256"]),
        cache_seconds=cache_seconds,
        train_seconds=train_seconds,
        seconds_per_step=seconds_per_step,
        layer=trainer.layer_kind,
        held_out=held_out,
    )


__all__ = [
    "DEFAULT_REPORTS",
    "Ablation",
    "DecoderTrainConfig",
    "DecoderTrainResult",
    "DecoderTrainer",
    "MapVariant",
    "StepRecord",
    "batch_indices",
    "lr_factor",
    "measure_held_out",
    "total_steps",
    "train_decoder",
]
