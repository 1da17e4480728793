"""The two trainers of mini-cxr: one optimizer update of the VAE (stage A) or of text encoder + U-Net (stage B).

Stage A (:class:`VaeTrainer`): an AutoencoderKL on random crops of rendered phantoms, with a loss that needs no
pretrained network: L1 + SSIM + an L1 distance of Fourier amplitudes (keeps the fine texture that L1 alone
blurs) + a small KL term. With ``vae_train.lesions.steps``, a lesion phase follows at its own constant rate,
adding the lesion and peaks terms of :mod:`~medsign_forensics.diffusion.vae_lesions`.

Stage B (:class:`UNetTrainer`): a CLIP text encoder and the U-Net trained jointly on VAE latents with
v-prediction (the target is v = alpha*eps - sigma*x0; it keeps the loss informative at high noise, where a small
epsilon model tends to wash out), min-SNR loss weighting and an EMA of the weights. With grounding weights in the
config, the batch's finding words' cross-attention is pushed onto their lesion masks
(:mod:`~medsign_forensics.diffusion.grounding`); without them the step is exactly the ungrounded one.

Both warm the learning rate up linearly, then hold it (:class:`~medsign_forensics.training.schedule.WarmupCosine`
with floor 1); stage B's ``lr_floor`` below 1 cools it down to that share at the run's last step instead. The
initial weights depend on the config alone.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from medsign_forensics.diffusion.configs import (
    GroundingTarget,
    MiniCxrConfig,
    PredictionType,
    build_text_encoder,
    build_training_scheduler,
    build_unet,
    build_vae,
)
from medsign_forensics.diffusion.grounding import GroundingCapture, GroundingTargets, lesion_cells
from medsign_forensics.diffusion.layout import adapter_residuals, build_adapter
from medsign_forensics.diffusion.vae_lesions import lesion_terms
from medsign_forensics.errors import ModelError
from medsign_forensics.training.schedule import WarmupCosine


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
        self.schedule = WarmupCosine(total=train.steps, warmup=train.warmup_steps, floor=1.0)
        self.step_count = 0

    @property
    def in_lesion_phase(self) -> bool:
        """Past the plain phase of a config with a lesion phase (without one, ``--steps`` beyond ``steps`` goes on
        as plain stage A)."""
        train = self.config.vae_train
        return train.lesions.steps > 0 and self.step_count >= train.steps

    def loss(
        self, images: torch.Tensor, generator: torch.Generator | None = None, lesions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``images`` (B, C, H, W) in [0, 1]; ``lesions`` (B, 1, H, W) their lesion weights
        (:func:`~medsign_forensics.diffusion.vae_lesions.lesion_weights`) adds the lesion phase's terms. Returns the
        loss and its parts."""
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
        if lesions is not None:
            lesion, peaks = lesion_terms((recon - x).abs(), lesions.to(self.device))
            loss = loss + train.lesions.weight * (lesion + peaks)
            parts.update(lesion=lesion.item(), peaks=peaks.item())
        return loss, parts

    def step(
        self, images: torch.Tensor, generator: torch.Generator | None = None, lesions: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One update; ``lesions`` as in :meth:`loss`. The lesion phase holds its own rate."""
        self.vae.train()
        train = self.config.vae_train
        if self.in_lesion_phase:
            for group in self.optimizer.param_groups:
                group["lr"] = train.lesions.learning_rate
        else:
            self.schedule.apply(self.optimizer, train.learning_rate, self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(images, generator, lesions)
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
            self.adapter = build_adapter(config).to(device) if config.layout.enabled else None
        self.scheduler = build_training_scheduler(config)
        self._alphas = self.scheduler.alphas_cumprod.to(device)
        train = config.unet_train
        params = [p for module in self.modules.values() for p in module.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=train.learning_rate, betas=(0.9, 0.99), weight_decay=0.01)
        self.ema = Ema(self.modules, train.ema_decay) if train.ema_decay else None
        self.schedule = WarmupCosine(total=train.steps, warmup=train.warmup_steps, floor=train.lr_floor)
        self.step_count = 0

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        modules = {"text_encoder": self.text_encoder, "unet": self.unet}
        if self.adapter is not None:
            modules["adapter"] = self.adapter
        return modules

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
        self,
        latents: torch.Tensor,
        captions: list[str],
        generator: torch.Generator,
        grounding: GroundingTargets | None = None,
        layout: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``latents``: scaled VAE latents (as the U-Net sees them). Noise and timesteps come from ``generator``.

        ``grounding`` (the batch's grounded tokens and masks) is used only when the config's grounding weights are
        not both 0; the parts then add the grounding losses and the inside-mask share of the grounded attention.
        ``layout`` (B, kinds, grid, grid) feeds the layout adapter, which a model with one requires; the
        generator then also draws which items go without it (``layout.dropout``).
        """
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
        spec = self.config.unet_train.grounding
        grounded = spec.enabled and grounding is not None and len(grounding) > 0
        attend = grounded and spec.attention
        extra = {}
        if self.adapter is not None:
            if layout is None:
                raise ModelError("this model has a layout adapter; give each training item its layout")
            keep = torch.rand(batch, generator=generator) >= self.config.layout.dropout
            extra["down_intrablock_additional_residuals"] = adapter_residuals(
                self.adapter, layout.to(self.device), keep.to(self.device)
            )
        with _autocast(self.device):
            states = self.encode_captions(captions)
            if attend:
                assert grounding is not None
                with GroundingCapture(
                    self.unet, grounding.to(self.device), peak=spec.target is GroundingTarget.PEAK
                ) as capture:
                    prediction = self.unet(noisy, timesteps, states, **extra).sample
            else:
                prediction = self.unet(noisy, timesteps, states, **extra).sample
        squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
        per_sample = squared.mean(dim=(1, 2, 3))
        weights = self._snr_weights(timesteps)
        if grounded and spec.lesion_weight > 0:
            assert grounding is not None
            cells = 1 + spec.lesion_weight * lesion_cells(grounding, batch).to(self.device)
            loss = ((squared * cells[:, None]).mean(dim=(1, 2, 3)) * weights).mean()
        else:
            loss = (per_sample * weights).mean()
        parts = {"mse": per_sample.mean().item()}
        if spec.enabled:
            parts["grounded_tokens"] = float(0 if grounding is None else len(grounding))
        if attend:
            terms = capture.losses()
            loss = loss + spec.token_weight * terms.token + spec.pixel_weight * terms.pixel
            parts.update(token_loss=terms.token.item(), pixel_loss=terms.pixel.item(), inside=terms.inside)
        return loss, parts

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

    def step(
        self,
        latents: torch.Tensor,
        captions: list[str],
        generator: torch.Generator,
        grounding: GroundingTargets | None = None,
        layout: torch.Tensor | None = None,
    ) -> dict[str, float]:
        train = self.config.unet_train
        for module in self.modules.values():
            module.train()
        self.schedule.apply(self.optimizer, train.learning_rate, self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(latents, captions, generator, grounding, layout)
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
            **{name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.shadow,
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            if name not in state:
                raise ModelError(f"the checkpoint has no {name} weights but the config asks for one")
            module.load_state_dict(state[name], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ModelError("the checkpoint has no EMA weights but the config asks for them")
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.step_count = int(state["step"])

    @torch.no_grad()
    def initialise_from(
        self,
        text_encoder: torch.nn.Module,
        unet: torch.nn.Module,
        adapter: torch.nn.Module | None = None,
        *,
        new_latents: bool = False,
    ) -> None:
        """Start from trained weights (a fine-tune) instead of the config's random ones; the EMA starts from them.

        Strict: the modules must have this config's architecture, key for key and shape for shape. A layout
        adapter the initial model lacks keeps the config's initial weights (adding a layout to a trained model).
        ``new_latents`` (a new VAE): the U-Net's first and last convolutions, which read and write the latent,
        keep the config's initial weights, and only they may differ in shape."""
        if self.step_count:
            raise ModelError("initial weights can only be loaded before the first step")
        if adapter is not None and self.adapter is None:
            raise ModelError("the initial model has a layout adapter but this config has none; set layout.enabled")
        try:
            self.text_encoder.load_state_dict(text_encoder.state_dict(), strict=True)
            weights = unet.state_dict()
            if new_latents:
                weights.update({k: v for k, v in self.unet.state_dict().items() if k.split(".")[0] in _LATENT_IO})
            self.unet.load_state_dict(weights, strict=True)
            if adapter is not None and self.adapter is not None:
                self.adapter.load_state_dict(adapter.state_dict(), strict=True)
        except RuntimeError as error:
            raise ModelError(
                f"the initial model does not have this config's architecture ({' '.join(str(error).split())[:300]}); "
                "use the config it was trained with"
            ) from None
        if self.ema is not None:
            self.ema = Ema(self.modules, self.ema.decay)

    def export_modules(self) -> dict[str, torch.nn.Module]:
        """Copies of the text encoder, U-Net and layout adapter (if any) carrying the EMA weights when EMA is on."""
        copies = {name: copy.deepcopy(module) for name, module in self.modules.items()}
        if self.ema is not None:
            self.ema.copy_to(copies)
        return copies


_LATENT_IO = ("conv_in", "conv_out")  # the U-Net's modules that read and write the latent


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
