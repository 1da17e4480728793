"""Training of the embedded default model mini-cxr, from scratch, on phantoms captioned with real reports.

Stage A (``vae``): an AutoencoderKL on random crops of rendered phantoms (:class:`VaeTrainer`), then (with
``vae_train.lesions.steps``) the lesion phase on crops around the full-size lesion masks
(:mod:`~medsign_forensics.diffusion.vae_lesions`); its latent scaling factor is then set to 1/std of the
latents, as in SD.

Stage B (``unet``): a BPE tokenizer is trained on the training captions, then a CLIP text encoder and the
U-Net are trained jointly on cached VAE latents (:class:`UNetTrainer`), with 10% caption dropout (the empty
caption, as the pipeline uses for the unconditional half of classifier-free guidance). With grounding weights in
the config, each batch's finding words are also grounded on their lesion masks
(:mod:`~medsign_forensics.diffusion.grounding_data`); with ``layout.enabled`` the same masks are the layout
that a layout adapter learns to draw from (:mod:`~medsign_forensics.diffusion.layout`). ``init_from`` continues
stage B from an exported model instead of random weights (:mod:`~medsign_forensics.diffusion.init_from`), with
its VAE or, after this run's own stage A, with the new one.

Everything is seeded and resumable (:mod:`medsign_forensics.training`): a checkpoint per stage holds the models,
optimizers, EMA, step, wall time and every random generator; losses go to ``log.jsonl``, every invocation to
``runs.jsonl``. When stage B reaches its step count the model is exported to ``OUT/model``
(:func:`~medsign_forensics.diffusion.export.export_model`).

Output folder::

    OUT/config.json  log.jsonl  runs.jsonl  renders.u8  renders.json  tokenizer/  latents.pt
    OUT/vae/checkpoint.pt  OUT/vae/final/  OUT/unet/checkpoint.pt  OUT/model/
    OUT/masks.u8  masks.json (grounded and layout runs)  OUT/init.json (runs started from an exported model)
    OUT/lesions.u16  lesions.json (runs with a lesion phase)
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics.diffusion import data as data_module
from medsign_forensics.diffusion.base_trainers import UNetTrainer, VaeTrainer
from medsign_forensics.diffusion.configs import MiniCxrConfig
from medsign_forensics.diffusion.export import export_model
from medsign_forensics.diffusion.grounding_data import open_grounding
from medsign_forensics.diffusion.init_from import INIT_FILE, InitFrom, prepare_init
from medsign_forensics.diffusion.latent_norm import channel_stats, fold_channel_norm
from medsign_forensics.diffusion.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from medsign_forensics.diffusion.vae_lesions import LESION_TASK, LesionCache, LesionCrops
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import atomic_path, sha256_file, write_text
from medsign_forensics.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from medsign_forensics.training.environment import hardware, software
from medsign_forensics.training.log import JsonlLog
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.training.run import RunFolder
from medsign_forensics.training.weights import save_folder

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
RUNS_FILE = "runs.jsonl"


class Stage(str, Enum):
    VAE = "vae"
    UNET = "unet"
    ALL = "all"


@dataclass(frozen=True)
class StageResult:
    stage: str
    step: int
    target_steps: int
    wall_time_s: float
    mean_loss: float | None  # over the last (up to) 100 logged steps of this stage


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    stages: tuple[StageResult, ...]
    model_dir: Path | None  # set once the exported SD-1.x folder exists


def train(
    config: MiniCxrConfig,
    out_dir: str | Path,
    *,
    stage: Stage | str = Stage.ALL,
    steps: int | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    source: data_module.StudySource | None = None,
    progress: ProgressFn | None = None,
    command: str | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Run stage A, stage B or both into ``out_dir``; ``steps`` overrides each requested stage's step count.

    ``source`` defaults to the training split of ``config.data.corpus`` rendered as phantoms. ``command`` is
    recorded in the model card (the CLI passes its own command line). ``progress`` receives the rendering,
    encoding and every stage's step events. ``init_from`` (an exported model folder) starts stage B from its
    weights, VAE and tokenizer; a run so started trains stage B only.
    """
    stage = Stage(stage)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if steps is not None and steps < 0:
        raise InputError(f"--steps must be >= 0, got {steps}")
    out = Path(out_dir)
    if (init_from is not None or (out / INIT_FILE).is_file()) and stage is not Stage.UNET:
        raise InputError("a run started from an exported model (--init-from) trains stage B only; use --stage unet")
    run = _Run(config, out, resume=resume, device=device, progress=progress)
    run.init = prepare_init(out, init_from)
    run.record_invocation(command or " ".join(sys.argv), stage, steps)
    source = source if source is not None else data_module.load_source(config.data)
    run.source = source
    results = []
    if stage in (Stage.VAE, Stage.ALL):
        results.append(run.train_vae(steps if steps is not None else config.vae_train.total_steps))
    if stage in (Stage.UNET, Stage.ALL):
        results.append(run.train_unet(steps if steps is not None else config.unet_train.steps))
    model_dir = out / "model"
    return TrainResult(out_dir=out, stages=tuple(results), model_dir=model_dir if model_dir.is_dir() else None)


class _Run:
    def __init__(
        self, config: MiniCxrConfig, out: Path, *, resume: bool, device: torch.device, progress: ProgressFn | None
    ) -> None:
        self.config = config
        self.device = device
        self.progress = progress
        self.source: data_module.StudySource | None = None
        self.init: InitFrom | None = None
        self.folder = RunFolder(out, marker=CONFIG_FILE, resume=resume, log=LOG_FILE)
        self.out = self.folder.path
        current = json.loads(json.dumps(config.to_dict()))
        if self.folder.resuming:
            saved = json.loads(self.folder.marker.read_text(encoding="utf-8"))
            self.folder.check_config(saved, current)
        _write_json(self.folder.marker, current)
        self.log = self.folder.log

    # bookkeeping

    def record_invocation(self, command: str, stage: Stage, steps: int | None) -> None:
        entry = {"time": _now(), "command": command, "stage": stage.value, "steps": steps}
        JsonlLog(self.out / RUNS_FILE).append({**entry, "hardware": hardware(self.device), "software": software()})

    def mean_loss(self, stage: str, last: int = 100) -> float | None:
        losses = [e["loss"] for e in self.log.read() if e.get("stage") == stage and "loss" in e]
        return float(np.mean(losses[-last:])) if losses else None

    def render_cache(self) -> data_module.RenderCache:
        assert self.source is not None
        count = len(self.source) * self.config.data.renders_per_report
        cache = data_module.RenderCache(self.out, count=count, size=self.config.image_size)
        per_report, seed = self.config.data.renders_per_report, self.config.seed
        cache.build(self.source, renders_per_report=per_report, seed=seed, progress=self.progress)
        return cache

    # stage A

    def train_vae(self, target: int) -> StageResult:
        trainer = VaeTrainer(self.config, device=self.device)
        generator = torch.Generator().manual_seed(self.config.seed)
        checkpoint = self.out / "vae" / "checkpoint.pt"
        wall = self._restore(checkpoint, trainer, generator, "vae")
        images = self.render_cache().images()
        train = self.config.vae_train
        crop = min(train.crop_size, self.config.image_size)
        lesion_crops: LesionCrops | None = None
        start = time.perf_counter() - wall
        notify(self.progress, VAE_TASK, trainer.step_count, target)
        while trainer.step_count < target:
            if trainer.in_lesion_phase:
                lesion_crops = lesion_crops or self._lesion_crops(images, crop)
                batch, lesions = lesion_crops.batch(train.lesions.batch_size, generator)
                parts = trainer.step(batch, generator, lesions)
            else:
                batch = data_module.random_crops(images, train.batch_size, crop, generator)
                parts = trainer.step(batch, generator)
            self._logged_step("vae", VAE_TASK, trainer, target, start, parts)
            if trainer.step_count % train.checkpoint_every == 0 or trainer.step_count == target:
                self._save(checkpoint, trainer, generator, time.perf_counter() - start)
        wall = time.perf_counter() - start
        if trainer.step_count >= target and _finished_at(self.out / "vae" / "final") != trainer.step_count:
            self._finish_vae(trainer, images, generator)
        return StageResult("vae", trainer.step_count, target, wall, self.mean_loss("vae"))

    def _lesion_crops(self, images: np.ndarray, crop: int) -> LesionCrops:
        assert self.source is not None
        cache = LesionCache(self.out, count=len(images), size=self.config.image_size)
        cache.build(
            self.source, renders_per_report=self.config.data.renders_per_report, seed=self.config.seed,
            progress=self.progress, task=LESION_TASK,
        )
        return LesionCrops(images, cache.images(), crop=crop, centred=self.config.vae_train.lesions.centred)

    def _finish_vae(self, trainer: VaeTrainer, images: np.ndarray, generator: torch.Generator) -> None:
        """Set the latent scaling factor to 1/std of the latents (after standardising each channel, with
        ``vae_train.channel_norm``) and save the VAE for stage B."""
        vae = trainer.vae.eval()
        samples = []
        batch = self.config.vae_train.batch_size
        with torch.no_grad():
            for _ in range(self.config.vae_train.latent_batches):
                rows = torch.randint(0, len(images), (batch,), generator=generator).numpy()
                x = data_module.to_tensor(images[np.sort(rows)]).to(self.device) * 2 - 1
                samples.append(vae.encode(x).latent_dist.sample(generator=generator).float().cpu())
        latents = torch.cat(samples)
        event: dict[str, Any] = {"stage": "vae", "event": "finished", "step": trainer.step_count}
        if self.config.vae_train.channel_norm:
            channel_mean, channel_std = channel_stats(latents)
            fold_channel_norm(vae, channel_mean, channel_std)
            latents = (latents - channel_mean.float()[:, None, None]) / channel_std.float()[:, None, None]
            event.update(channel_mean=channel_mean.tolist(), channel_std=channel_std.tolist())
        std = latents.std().item()
        if not math.isfinite(std) or std <= 0:
            raise ModelError(f"the trained VAE gives latents with standard deviation {std}; training diverged")
        vae.register_to_config(scaling_factor=1.0 / std)
        final = self.out / "vae" / "final"

        def write(tmp: Path) -> None:
            vae.save_pretrained(tmp, safe_serialization=True)
            _write_json(tmp / "trained_steps.json", {"steps": trainer.step_count})

        save_folder(final, write)
        self.log.append({**event, "scaling_factor": 1.0 / std})

    # stage B

    def train_unet(self, target: int) -> StageResult:
        from diffusers import AutoencoderKL

        final_vae = self.out / "vae" / "final"
        if not (final_vae / "config.json").is_file():
            raise InputError("stage B needs the trained VAE; run --stage vae (or --stage all) first", path=final_vae)
        vae = AutoencoderKL.from_pretrained(str(final_vae), local_files_only=True, low_cpu_mem_usage=False)
        vae = vae.to(self.device).eval()
        assert self.source is not None
        tokenizer = self._tokenizer()
        latents, rows_report = self._latents(vae, sha256_file(final_vae / "diffusion_pytorch_model.safetensors"))
        trainer = UNetTrainer(self.config, tokenizer, device=self.device)
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        checkpoint = self.out / "unet" / "checkpoint.pt"
        if self.init is not None and not checkpoint.is_file():
            trainer.initialise_from(*self.init.modules(), new_latents=self.init.record.own_vae)
        wall = self._restore(checkpoint, trainer, generator, "unet")
        train = self.config.unet_train
        grounding = None
        if train.grounding.enabled or self.config.layout.enabled:
            grounding = open_grounding(
                self.out, self.source, renders_per_report=self.config.data.renders_per_report, seed=self.config.seed,
                image_size=self.config.image_size, latent_size=self.config.latent_size, tokenizer=tokenizer,
                locations=train.grounding.locations, progress=self.progress,
            )
        scaling = float(vae.config.scaling_factor)
        start = time.perf_counter() - wall
        notify(self.progress, UNET_TASK, trainer.step_count, target)
        while trainer.step_count < target:
            rows = torch.randint(0, len(latents), (train.batch_size,), generator=generator)
            channels = self.config.vae.latent_channels
            mean, logvar = latents[rows, :channels].float(), latents[rows, channels:].float()
            z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)) * scaling
            captions = self._captions(rows_report[rows], generator)
            targets, layout = None, None
            if grounding is not None:
                targets = grounding.targets(rows.tolist(), captions) if train.grounding.enabled else None
                layout = grounding.layout(rows.tolist()) if self.config.layout.enabled else None
            parts = trainer.step(z, captions, generator, targets, layout)
            self._logged_step("unet", UNET_TASK, trainer, target, start, parts)
            if trainer.step_count % train.checkpoint_every == 0 or trainer.step_count == target:
                self._save(checkpoint, trainer, generator, time.perf_counter() - start)
        wall = time.perf_counter() - start
        if trainer.step_count >= target:
            self._export(trainer, vae)
        return StageResult("unet", trainer.step_count, target, wall, self.mean_loss("unet"))

    def _tokenizer(self) -> Any:
        folder = self.out / "tokenizer"
        if (folder / "vocab.json").is_file():
            return load_tokenizer(folder)
        assert self.source is not None
        captions = [c for i in range(len(self.source)) for c in self.source.captions(i)]
        spec = self.config.tokenizer
        tokenizer = train_tokenizer(
            captions, vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
            max_token_length=spec.max_token_length,
        )
        save_folder(folder, lambda tmp: save_tokenizer(tokenizer, tmp))
        return load_tokenizer(folder)

    def _latents(self, vae: Any, vae_sha256: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of every cached render, (N, 2*4, h, w) fp16, encoded once per VAE."""
        path = self.out / "latents.pt"
        per_report = self.config.data.renders_per_report
        cached = torch.load(path, weights_only=True) if path.is_file() else {}
        if cached.get("vae_sha256") == vae_sha256:
            latents = cached["latents"]
        else:
            images = self.render_cache().images()
            latents = data_module.encode_posteriors(vae, images, self.device, progress=self.progress, task=ENCODE_TASK)
            _save_torch(path, {"latents": latents, "vae_sha256": vae_sha256})
        rows_report = torch.arange(len(latents)) // per_report
        return latents, rows_report

    def _captions(self, report_indices: torch.Tensor, generator: torch.Generator) -> list[str]:
        assert self.source is not None
        captions = []
        dropout = torch.rand(len(report_indices), generator=generator) < self.config.unet_train.caption_dropout
        picks = torch.randint(0, 1 << 30, (len(report_indices),), generator=generator)
        for index, drop, pick in zip(report_indices.tolist(), dropout.tolist(), picks.tolist(), strict=True):
            variants = self.source.captions(index)
            captions.append("" if drop else variants[pick % len(variants)])
        return captions

    def _export(self, trainer: UNetTrainer, vae: Any) -> Path:
        modules = trainer.export_modules()
        final = self.out / "model"
        export_model(
            final,
            config=self.config,
            tokenizer=trainer.tokenizer,
            text_encoder=modules["text_encoder"],
            unet=modules["unet"],
            vae=vae,
            adapter=modules.get("adapter"),
            card=self._card_facts(),
        )
        return final

    def _card_facts(self) -> dict[str, Any]:
        runs = JsonlLog(self.out / RUNS_FILE).read()
        stages = {}
        for name in ("vae", "unet"):
            state = _checkpoint_meta(self.out / name / "checkpoint.pt")
            stages[name] = {**state, "mean_loss_last_100": self.mean_loss(name)}
        return {
            "runs": runs,
            "stages": stages,
            "reports": len(self.source) if self.source is not None else None,
            "renders_per_report": self.config.data.renders_per_report,
            "corpus": self.config.data.corpus,
            "init": None if self.init is None else asdict(self.init.record),
        }

    def _logged_step(
        self, stage: str, task: str, trainer: VaeTrainer | UNetTrainer, target: int, start: float,
        parts: dict[str, float],
    ) -> None:
        """Log the step just taken and report it."""
        self.log.append({
            "stage": stage,
            "step": trainer.step_count,
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "time_s": round(time.perf_counter() - start, 3),
            **parts,
        })
        notify(self.progress, task, trainer.step_count, target, {"loss": parts["loss"]})

    # checkpoints

    def _save(self, path: Path, trainer: VaeTrainer | UNetTrainer, generator: torch.Generator, wall: float) -> None:
        payload = {"trainer": trainer.state_dict(), "wall_time_s": wall, "hardware": hardware(self.device)}
        save_checkpoint(path, payload, generators={"data": generator})

    def _restore(
        self, path: Path, trainer: VaeTrainer | UNetTrainer, generator: torch.Generator, stage: str
    ) -> float:
        """Continue from the stage's checkpoint if there is one, else seed the global generator; trim the
        stage's log lines back to the checkpoint. Returns the wall time so far."""
        wall = 0.0
        if path.is_file():
            state = load_checkpoint(path, device=self.device)
            trainer.load_state_dict(state["trainer"])
            restore_rng(state["rng"], generators={"data": generator})
            wall = float(state["wall_time_s"])
        else:
            torch.manual_seed(generator.initial_seed())
        self.folder.restart_log(trainer.step_count, where={"stage": stage})
        return wall


# --- helpers -----------------------------------------------------------------------------------------------

VAE_TASK = "stage A: VAE"
UNET_TASK = "stage B: text encoder + U-Net"
ENCODE_TASK = "encoding latents"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    state = load_checkpoint(path)
    return {
        "step": int(state["trainer"]["step"]),
        "wall_time_s": float(state["wall_time_s"]),
        "hardware": state["hardware"],
    }


def _finished_at(final_vae: Path) -> int | None:
    marker = final_vae / "trained_steps.json"
    return int(json.loads(marker.read_text(encoding="utf-8"))["steps"]) if marker.is_file() else None


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2))


def _save_torch(path: Path, state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
