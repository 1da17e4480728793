"""Training of the embedded default model mini-cxr, from scratch, on phantoms captioned with real reports.

Stage A (``vae``): an AutoencoderKL on random crops of rendered phantoms, with a loss that needs no
pretrained network: L1 + SSIM + an L1 distance of Fourier amplitudes (keeps the fine texture that L1 alone
blurs) + a small KL term. Its latent scaling factor is then set to 1/std of the latents, as in SD.

Stage B (``unet``): a BPE tokenizer is trained on the training captions, then a CLIP text encoder and the
U-Net are trained jointly on cached VAE latents with v-prediction (the target is v = alpha*eps - sigma*x0;
it keeps the loss informative at high noise, where a small epsilon model tends to wash out), min-SNR loss
weighting, 10% caption dropout (the empty caption, as the pipeline uses for the unconditional half of
classifier-free guidance) and an EMA of the weights.

Everything is seeded and resumable: a checkpoint holds the models, optimizers, EMA, step, wall time and the
random generator state; losses go to ``log.jsonl``. When stage B reaches its step count the model is
exported to ``OUT/model``: an SD-1.x folder in fp16 safetensors with a SHA256SUMS manifest and a
MODEL_CARD.md that records what this run really did.

Output folder::

    OUT/config.json  log.jsonl  runs.jsonl  renders.u8  renders.json  tokenizer/  latents.pt
    OUT/vae/checkpoint.pt  OUT/vae/final/  OUT/unet/checkpoint.pt  OUT/model/
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsign_forensics import __version__
from medsign_forensics.diffusion import data as data_module
from medsign_forensics.diffusion.configs import (
    MiniCxrConfig,
    PredictionType,
    build_sampling_scheduler,
    build_text_encoder,
    build_training_scheduler,
    build_unet,
    build_vae,
)
from medsign_forensics.diffusion.loader import MANIFEST_NAME, NAME_KEY, combined_sha256
from medsign_forensics.diffusion.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import atomic_path, sha256_file, write_text

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 30_000_000


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


# --- stage A: the VAE -----------------------------------------------------------------------------------


class VaeTrainer:
    """The VAE, its optimizer and its loss; one :meth:`step` is one optimizer update."""

    def __init__(self, config: MiniCxrConfig, *, device: torch.device) -> None:
        self.config = config
        self.device = device
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)  # the initial weights depend on the config alone
            self.vae = build_vae(config).to(device)
        train = config.vae_train
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=train.learning_rate, betas=(0.9, 0.99))
        self.step_count = 0

    def loss(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``images`` (B, C, H, W) in [0, 1]. Returns the loss and its parts."""
        from kornia.losses import ssim_loss

        train = self.config.vae_train
        x = images.to(self.device) * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if generator is not None else posterior.sample()
        recon = self.vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        ssim = ssim_loss((recon + 1) / 2, (x + 1) / 2, window_size=7, max_val=1.0) * 2  # = 1 - SSIM
        freq = (torch.fft.rfft2(recon, norm="ortho").abs() - torch.fft.rfft2(x, norm="ortho").abs()).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + train.ssim_weight * ssim + train.frequency_weight * freq + train.kl_weight * kl
        parts = {"l1": l1.item(), "one_minus_ssim": ssim.item(), "frequency": freq.item(), "kl": kl.item()}
        return loss, parts

    def step(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        self.vae.train()
        _set_lr(
            self.optimizer,
            _lr(self.config.vae_train.learning_rate, self.config.vae_train.warmup_steps, self.step_count),
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(images, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.optimizer.step()
        self.step_count += 1
        return {"loss": loss.item(), **parts}

    def state_dict(self) -> dict[str, Any]:
        return {"vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["vae"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])


# --- stage B: text encoder + U-Net ------------------------------------------------------------------------


class Ema:
    """Exponential moving average of parameters, kept in fp32."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {
            f"{name}.{key}": p.detach().float().clone()
            for name, module in modules.items()
            for key, p in module.named_parameters()
        }

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module]) -> None:
        for name, module in modules.items():
            for key, p in module.named_parameters():
                self.shadow[f"{name}.{key}"].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        for name, module in modules.items():
            for key, p in module.named_parameters():
                p.copy_(self.shadow[f"{name}.{key}"].to(p.dtype))


class UNetTrainer:
    """Text encoder + U-Net trained jointly from scratch on latents; one :meth:`step` is one update."""

    def __init__(self, config: MiniCxrConfig, tokenizer: Any, *, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.tokenizer = tokenizer
        with torch.random.fork_rng():
            torch.manual_seed(config.seed + 1)  # the initial weights depend on the config alone
            self.text_encoder = build_text_encoder(
                config,
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            ).to(device)
            self.unet = build_unet(config).to(device)
        self.scheduler = build_training_scheduler(config)
        self._alphas = self.scheduler.alphas_cumprod.to(device)
        train = config.unet_train
        params = list(self.text_encoder.parameters()) + list(self.unet.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=train.learning_rate, betas=(0.9, 0.99), weight_decay=0.01)
        self.ema = Ema(self.modules, train.ema_decay) if train.ema_decay else None
        self.step_count = 0

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.text_encoder, "unet": self.unet}

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            captions,
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def loss(
        self, latents: torch.Tensor, captions: list[str], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``latents``: scaled VAE latents (as the U-Net sees them). Noise and timesteps come from ``generator``."""
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator).to(
            self.device
        )
        latents = latents.to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.config.scheduler.prediction_type is PredictionType.V:
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with _autocast(self.device):
            states = self.encode_captions(captions)
            prediction = self.unet(noisy, timesteps, states).sample
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = self._snr_weights(timesteps)
        loss = (per_sample * weights).mean()
        return loss, {"mse": per_sample.mean().item()}

    def _snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weighting (Hang et al. 2023), in the form for the prediction type in use."""
        gamma = self.config.unet_train.min_snr_gamma
        if gamma is None:
            return torch.ones(timesteps.shape, device=self.device)
        alpha = self._alphas[timesteps]
        snr = alpha / (1 - alpha)
        clipped = torch.clamp(snr, max=gamma)
        if self.config.scheduler.prediction_type is PredictionType.V:
            return clipped / (snr + 1)
        return clipped / snr

    def step(self, latents: torch.Tensor, captions: list[str], generator: torch.Generator) -> dict[str, float]:
        train = self.config.unet_train
        self.text_encoder.train()
        self.unet.train()
        _set_lr(self.optimizer, _lr(train.learning_rate, train.warmup_steps, self.step_count))
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(latents, captions, generator)
        loss.backward()
        params = [p for m in self.modules.values() for p in m.parameters()]
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.modules)
        self.step_count += 1
        return {"loss": loss.item(), **parts}

    def state_dict(self) -> dict[str, Any]:
        return {
            "text_encoder": self.text_encoder.state_dict(),
            "unet": self.unet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.shadow,
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.text_encoder.load_state_dict(state["text_encoder"], strict=True)
        self.unet.load_state_dict(state["unet"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ModelError("the checkpoint has no EMA weights but the config asks for them")
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.step_count = int(state["step"])

    def export_modules(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Copies of the text encoder and U-Net carrying the EMA weights when EMA is on."""
        text_encoder, unet = copy.deepcopy(self.text_encoder), copy.deepcopy(self.unet)
        if self.ema is not None:
            self.ema.copy_to({"text_encoder": text_encoder, "unet": unet})
        return text_encoder, unet


# --- the run: data, checkpoints, logs ---------------------------------------------------------------------


def train(
    config: MiniCxrConfig,
    out_dir: str | Path,
    *,
    stage: Stage | str = Stage.ALL,
    steps: int | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    source: data_module.StudySource | None = None,
    progress: bool = False,
    command: str | None = None,
) -> TrainResult:
    """Run stage A, stage B or both into ``out_dir``; ``steps`` overrides each requested stage's step count.

    ``source`` defaults to the training split of ``config.data.corpus`` rendered as phantoms. ``command`` is
    recorded in the model card (the CLI passes its own command line).
    """
    stage = Stage(stage)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if steps is not None and steps < 0:
        raise InputError(f"--steps must be >= 0, got {steps}")
    out = Path(out_dir)
    run = _Run(config, out, resume=resume, device=device, progress=progress)
    run.record_invocation(command or " ".join(sys.argv), stage, steps)
    source = source if source is not None else data_module.load_source(config.data)
    run.source = source
    results = []
    if stage in (Stage.VAE, Stage.ALL):
        results.append(run.train_vae(steps if steps is not None else config.vae_train.steps))
    if stage in (Stage.UNET, Stage.ALL):
        results.append(run.train_unet(steps if steps is not None else config.unet_train.steps))
    model_dir = out / "model"
    return TrainResult(out_dir=out, stages=tuple(results), model_dir=model_dir if model_dir.is_dir() else None)


class _Run:
    def __init__(self, config: MiniCxrConfig, out: Path, *, resume: bool, device: torch.device, progress: bool) -> None:
        self.config = config
        self.out = out
        self.device = device
        self.progress = progress
        self.source: data_module.StudySource | None = None
        config_path = out / "config.json"
        if config_path.is_file():
            saved = MiniCxrConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
            if not resume:
                raise InputError(
                    "the output folder already holds a training run; pass --resume to continue it or choose a new --out",
                    path=out,
                )
            if saved != config:
                raise InputError(
                    "the config differs from the one this run started with (config.json); resume with the same "
                    "--config or start a new --out",
                    path=config_path,
                )
        elif resume:
            raise InputError("there is no training run to resume here (no config.json)", path=out)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(config_path, config.to_dict())
        self.log_path = out / "log.jsonl"

    # bookkeeping

    def record_invocation(self, command: str, stage: Stage, steps: int | None) -> None:
        entry = {
            "time": _now(),
            "command": command,
            "stage": stage.value,
            "steps": steps,
            "hardware": _hardware(self.device),
            "software": _software(),
        }
        with open(self.out / "runs.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def log(self, entry: dict[str, Any]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def mean_loss(self, stage: str, last: int = 100) -> float | None:
        if not self.log_path.is_file():
            return None
        losses = [e["loss"] for e in _read_jsonl(self.log_path) if e.get("stage") == stage and "loss" in e]
        return float(np.mean(losses[-last:])) if losses else None

    def render_cache(self) -> data_module.RenderCache:
        assert self.source is not None
        count = len(self.source) * self.config.data.renders_per_report
        cache = data_module.RenderCache(self.out, count=count, size=self.config.image_size)
        with _progress(self.progress, "rendering phantoms", count) as advance:
            cache.build(
                self.source,
                renders_per_report=self.config.data.renders_per_report,
                seed=self.config.seed,
                on_progress=lambda done, total: advance(done),
            )
        return cache

    # stage A

    def train_vae(self, target: int) -> StageResult:
        trainer = VaeTrainer(self.config, device=self.device)
        generator = torch.Generator().manual_seed(self.config.seed)
        checkpoint = self.out / "vae" / "checkpoint.pt"
        wall = self._restore(checkpoint, trainer, generator)
        images = self.render_cache().images()
        train = self.config.vae_train
        crop = min(train.crop_size, self.config.image_size)
        start = time.perf_counter() - wall
        with _progress(self.progress, "stage A: VAE", target, trainer.step_count) as advance:
            while trainer.step_count < target:
                batch = _crops(images, train.batch_size, crop, generator)
                parts = trainer.step(batch, generator)
                self.log(
                    {
                        "stage": "vae",
                        "step": trainer.step_count,
                        "lr": trainer.optimizer.param_groups[0]["lr"],
                        "time_s": round(time.perf_counter() - start, 3),
                        **parts,
                    }
                )
                advance(trainer.step_count)
                if trainer.step_count % train.checkpoint_every == 0 or trainer.step_count == target:
                    self._save(checkpoint, trainer, generator, time.perf_counter() - start)
        wall = time.perf_counter() - start
        if trainer.step_count >= target and _finished_at(self.out / "vae" / "final") != trainer.step_count:
            self._finish_vae(trainer, images, generator)
        return StageResult("vae", trainer.step_count, target, wall, self.mean_loss("vae"))

    def _finish_vae(self, trainer: VaeTrainer, images: np.ndarray, generator: torch.Generator) -> None:
        """Set the latent scaling factor to 1/std of the latents and save the VAE for stage B."""
        vae = trainer.vae.eval()
        samples = []
        batch = self.config.vae_train.batch_size
        with torch.no_grad():
            for _ in range(self.config.vae_train.latent_batches):
                rows = torch.randint(0, len(images), (batch,), generator=generator).numpy()
                x = _to_tensor(images[np.sort(rows)]).to(self.device) * 2 - 1
                samples.append(vae.encode(x).latent_dist.sample(generator=generator).float().cpu())
        std = torch.cat(samples).std().item()
        if not math.isfinite(std) or std <= 0:
            raise ModelError(f"the trained VAE gives latents with standard deviation {std}; training diverged")
        vae.register_to_config(scaling_factor=1.0 / std)
        final = self.out / "vae" / "final"

        def write(tmp: Path) -> None:
            vae.save_pretrained(tmp, safe_serialization=True)
            _write_json(tmp / "trained_steps.json", {"steps": trainer.step_count})

        _save_atomic(final, write)
        self.log({"stage": "vae", "event": "finished", "scaling_factor": 1.0 / std, "step": trainer.step_count})

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
        wall = self._restore(checkpoint, trainer, generator)
        train = self.config.unet_train
        scaling = float(vae.config.scaling_factor)
        start = time.perf_counter() - wall
        with _progress(self.progress, "stage B: text encoder + U-Net", target, trainer.step_count) as advance:
            while trainer.step_count < target:
                rows = torch.randint(0, len(latents), (train.batch_size,), generator=generator)
                channels = self.config.vae.latent_channels
                mean, logvar = latents[rows, :channels].float(), latents[rows, channels:].float()
                z = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)) * scaling
                captions = self._captions(rows_report[rows], generator)
                parts = trainer.step(z, captions, generator)
                self.log(
                    {
                        "stage": "unet",
                        "step": trainer.step_count,
                        "lr": trainer.optimizer.param_groups[0]["lr"],
                        "time_s": round(time.perf_counter() - start, 3),
                        **parts,
                    }
                )
                advance(trainer.step_count)
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
            captions,
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            max_token_length=spec.max_token_length,
        )
        _save_atomic(folder, lambda tmp: save_tokenizer(tokenizer, tmp))
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
            chunks = []
            with torch.no_grad(), _progress(self.progress, "encoding latents", len(images)) as advance:
                for start in range(0, len(images), 64):
                    x = _to_tensor(images[start : start + 64]).to(self.device) * 2 - 1
                    dist = vae.encode(x).latent_dist
                    chunks.append(torch.cat([dist.mean, dist.logvar], dim=1).half().cpu())
                    advance(min(start + 64, len(images)))
            latents = torch.cat(chunks)
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
        text_encoder, unet = trainer.export_modules()
        final = self.out / "model"
        export_model(
            final,
            config=self.config,
            tokenizer=trainer.tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            vae=vae,
            card=self._card_facts(),
        )
        return final

    def _card_facts(self) -> dict[str, Any]:
        runs = _read_jsonl(self.out / "runs.jsonl")
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
        }

    # checkpoints

    def _save(self, path: Path, trainer: VaeTrainer | UNetTrainer, generator: torch.Generator, wall: float) -> None:
        state = {
            "trainer": trainer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "wall_time_s": wall,
            "hardware": _hardware(self.device),
            "saved_at": _now(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_torch(path, state)

    def _restore(self, path: Path, trainer: VaeTrainer | UNetTrainer, generator: torch.Generator) -> float:
        """Load the stage's checkpoint if there is one; else seed the global generator. Returns wall time so far."""
        if not path.is_file():
            torch.manual_seed(generator.initial_seed())
            return 0.0
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise ModelError(
                f"cannot read the checkpoint ({error}); delete it to restart the stage", path=path
            ) from None
        trainer.load_state_dict(state["trainer"])
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        return float(state["wall_time_s"])


# --- export ------------------------------------------------------------------------------------------------


def export_model(
    folder: str | Path,
    *,
    config: MiniCxrConfig,
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write an SD-1.x folder: fp16 safetensors, vocab.json + merges.txt, SHA256SUMS, MODEL_CARD.md.

    Raises ModelError if a weights file would exceed 16 MiB or all weights 30 MB (the shipping limits).
    ``card``, when given, holds the facts of the training run that the model card reports.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    folder = Path(folder)

    def write(tmp: Path) -> None:
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()  # casting notices about fp32-only modules (there are none)
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        pipeline = StableDiffusionPipeline(
            vae=copy.deepcopy(vae).to("cpu", torch.float16),
            text_encoder=copy.deepcopy(text_encoder).to("cpu", torch.float16),
            tokenizer=tokenizer,
            unet=copy.deepcopy(unet).to("cpu", torch.float16),
            scheduler=build_sampling_scheduler(config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(str(tmp), safe_serialization=True)
        # transformers loads a model in the dtype its config names, diffusers in float32: name float32 so a
        # plain StableDiffusionPipeline.from_pretrained(folder) gets one dtype throughout (weights stay fp16).
        text_config = tmp / "text_encoder" / "config.json"
        _write_json(text_config, {**json.loads(text_config.read_text(encoding="utf-8")), "dtype": "float32"})
        _prefix_text_encoder_keys(tmp / "text_encoder" / "model.safetensors")
        index = tmp / "model_index.json"  # diffusers ignores keys that start with "_"; the loader reads the name
        _write_json(index, {**json.loads(index.read_text(encoding="utf-8")), NAME_KEY: config.name})
        shutil.rmtree(tmp / "tokenizer")
        save_tokenizer(tokenizer, tmp / "tokenizer")
        weights = sorted(p for p in tmp.rglob("*.safetensors"))
        sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in weights}
        too_big = [f"{name} ({size / 2**20:.1f} MiB)" for name, size in sizes.items() if size >= MAX_FILE_BYTES]
        if too_big:
            raise ModelError(f"weights file(s) over the 16 MiB limit: {', '.join(too_big)}; shrink the config")
        if sum(sizes.values()) > MAX_TOTAL_BYTES:
            raise ModelError(
                f"the weights total {sum(sizes.values()) / 1e6:.1f} MB, over the 30 MB limit; shrink the config"
            )
        hashes = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST_NAME).write_text("".join(f"{h}  {n}\n" for n, h in sorted(hashes.items())), encoding="utf-8")
        weight_hashes = {name: hashes[name] for name in sizes}
        (tmp / "MODEL_CARD.md").write_text(_model_card(config, sizes, weight_hashes, card), encoding="utf-8")
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes 0600; the model is for everyone

    _save_atomic(folder, write)
    return folder


def _prefix_text_encoder_keys(path: Path) -> None:
    """Store CLIPTextModel keys as ``text_model.*``, the SD-1.x layout every transformers version reads
    (transformers 5 saves them without the prefix, which transformers 4 would silently leave unloaded)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file(
        {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()},
        str(path),
        metadata={"format": "pt"},
    )


def build_random_model(folder: str | Path, *, config: MiniCxrConfig, texts: list[str], seed: int = 0) -> Path:
    """Export an untrained model of ``config``'s architecture (tokenizer trained on ``texts``).

    For tests, and for timing the architecture before it is trained; its model card says it is untrained.
    """
    spec = config.tokenizer
    tokenizer = train_tokenizer(
        texts, vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, max_token_length=spec.max_token_length
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = build_vae(config)
        text_encoder = build_text_encoder(
            config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        unet = build_unet(config)
    return export_model(folder, config=config, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae)


def _model_card(
    config: MiniCxrConfig, sizes: dict[str, int], hashes: dict[str, str], card: dict[str, Any] | None
) -> str:
    lines = [
        f"# {config.name}",
        "",
        "A small text-to-image latent diffusion model (Stable Diffusion 1.x layout) trained from scratch on",
        "synthetic chest phantoms rendered from the findings of real radiology reports, captioned with the report",
        "text (medsign-forensics' embedded default). It is not a model of real radiographs.",
        "",
        "## Architecture",
        f"- Output {config.image_size}x{config.image_size}, {config.image_channels} channel(s); latent "
        f"{config.vae.latent_channels}x{config.latent_size}x{config.latent_size}.",
        f"- VAE (AutoencoderKL) block channels {list(config.vae.block_out_channels)}; text encoder (CLIPTextModel) "
        f"{config.text_encoder.num_layers} layers x {config.text_encoder.hidden_size}; U-Net block channels "
        f"{list(config.unet.block_out_channels)}, cross-attention at every level.",
        f"- Prediction type {config.scheduler.prediction_type.value}; sampling with DPM-Solver++.",
        "",
        "## Weights (fp16 safetensors)",
        "",
        "| file | MiB | SHA-256 |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {sizes[name] / 2**20:.2f} | `{hashes[name]}` |" for name in sorted(sizes)]
    lines += ["", f"Combined weights SHA-256: `{combined_sha256(hashes)}`", ""]
    if card is None:
        lines += [
            "## Training",
            "",
            "Untrained: random weights (built for tests or timing), no training run recorded.",
            "",
        ]
        return "\n".join(lines)
    lines += [
        "## Training data",
        f"- Corpus: {card['corpus']}, training split: {card['reports']} reports, "
        f"{card['renders_per_report']} phantom render(s) per report.",
        "",
        "## Training run (recorded by the run itself)",
        "",
        "| stage | steps | wall time | hardware | mean loss, last 100 steps |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, stage in card["stages"].items():
        loss = stage.get("mean_loss_last_100")
        lines.append(
            f"| {name} | {stage.get('step', '?')} | {_duration(stage.get('wall_time_s', 0.0))} | "
            f"{stage.get('hardware', '?')} | {'n/a' if loss is None else f'{loss:.4f}'} |"
        )
    lines += ["", "Commands, in order:", ""]
    lines += [f"- `{run['command']}` ({run['time']}; {run['hardware']})" for run in card["runs"]]
    if card["runs"]:
        software = card["runs"][-1]["software"]
        lines += ["", "Software of the last command: " + ", ".join(f"{k} {v}" for k, v in software.items()) + "."]
    lines += [
        "",
        "## Metrics",
        "",
        "Evaluated separately (finding recall, false findings on normal reports, side accuracy, Frechet distance);",
        "see BENCHMARKS.md. None are recorded here by the training run.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 3600:.2f} h)"


def _lr(base: float, warmup: int, step: int) -> float:
    return base * min(1.0, (step + 1) / warmup) if warmup > 0 else base


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def _crops(images: np.ndarray, batch: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randint(0, len(images), (batch,), generator=generator).tolist()
    size = images.shape[-1]
    offsets = torch.randint(0, size - crop + 1, (batch, 2), generator=generator).tolist()
    patches = [images[r, y : y + crop, x : x + crop] for r, (y, x) in zip(rows, offsets, strict=True)]
    return _to_tensor(np.stack(patches))


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} torch threads"


def _software() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "medsign_forensics": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "step": int(state["trainer"]["step"]),
        "wall_time_s": float(state["wall_time_s"]),
        "hardware": state["hardware"],
    }


def _finished_at(final_vae: Path) -> int | None:
    marker = final_vae / "trained_steps.json"
    return int(json.loads(marker.read_text(encoding="utf-8"))["steps"]) if marker.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2))


def _save_torch(path: Path, state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _save_atomic(folder: Path, write: Callable[[Path], None]) -> None:
    """Write a whole folder under a temporary name, then swap it into place."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def _progress(enabled: bool, description: str, total: int, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr when ``enabled``; yields ``advance(completed_count)``."""
    if not enabled:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda done: bar.update(task, completed=done)
