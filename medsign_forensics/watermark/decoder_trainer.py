"""One step of decoder fine-tuning (MedSign section 2.2.2) and the held-out measurement of its result.

Per step: a batch of cached items, I_w = D_w(x0), an 8-bit requantisation (straight-through, as the image will
be stored), ONE attack from ``attacks`` (its differentiable form from the shared attack library; "none"
included), the frozen, whitened extractor in eval mode, and the objective of
:mod:`medsign_forensics.watermark.losses`. Only D_w's ``decoder.*`` and ``post_quant_conv.*`` parameters train
(float32 on every device: bfloat16 rounding alone would cost about 45 dB of PSNR).

Against the spectral extractor a watermark layer after the frozen decoder trains instead
(:mod:`medsign_forensics.watermark.head`): I_w = head(I_o) with I_o from the cache, so a step needs no decoder
pass. Its residual has a fixed per-image RMS (``psnr``), so each loss term only decides *where* the energy goes;
each term is therefore divided by its value for the untrained layer on the same batch (``normalise_terms``).

Randomness is a pure function of (seed, step) and (seed, epoch), so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.localization.cache import CachedData
from medsign_forensics.training.schedule import WarmupCosine
from medsign_forensics.training.weights import load_state
from medsign_forensics.watermark.binding import Binding
from medsign_forensics.watermark.decoder_config import DecoderTrainConfig
from medsign_forensics.watermark.deployment import (
    DECODER_PREFIXES,
    FINETUNED,
    SPECTRAL_HEAD,
    DeploymentKey,
    decoder_state,
    load_decoder_state,
)
from medsign_forensics.watermark.head import HeadConfig, WatermarkHead
from medsign_forensics.watermark.hidden import HiddenExtractor, rgb_to_grey
from medsign_forensics.watermark.losses import LossTerms, decoder_objective
from medsign_forensics.watermark.spectral import SpectralExtractor


def total_steps(config: DecoderTrainConfig, n_items: int) -> int:
    return config.steps if config.steps is not None else config.epochs * math.ceil(n_items / config.batch)


def schedule(config: DecoderTrainConfig, total: int) -> WarmupCosine:
    """Linear warm-up (at most a fifth of the run), then cosine from the peak down to ``min_lr``."""
    return WarmupCosine(total=total, warmup=min(config.warmup_steps, total // 5),
                        floor=min(1.0, config.min_lr / config.peak_lr))


def lr_factor(step: int, config: DecoderTrainConfig, total: int) -> float:
    """The factor of the peak rate at ``step`` (see :func:`schedule`)."""
    return schedule(config, total).factor(step)


def batch_indices(step: int, *, n_items: int, batch: int, seed: int) -> np.ndarray:
    """Items of a step: consecutive slices of per-epoch permutations (each a pure function of seed and epoch)."""
    start = step * batch
    positions = np.arange(start, start + batch)
    epochs = positions // n_items
    out = np.empty(batch, dtype=np.int64)
    for epoch in np.unique(epochs):
        permutation = np.random.default_rng([seed, 7, int(epoch)]).permutation(n_items)
        mask = epochs == epoch
        out[mask] = permutation[positions[mask] % n_items]
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


class DecoderTrainer:
    """D_o (frozen), the trainable side (D_w's decoder weights, or the watermark layer for a spectral
    extractor), the frozen extractor, optimiser and schedule."""

    def __init__(
        self,
        config: DecoderTrainConfig,
        *,
        model: Any,
        extractor: HiddenExtractor | SpectralExtractor,
        key: DeploymentKey,
        data: CachedData,
    ) -> None:
        self.config = config
        self.model = model
        self.data = data
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.extractor = extractor.to(self.device).eval().requires_grad_(False)
        if extractor.config.bits != key.bits:
            raise InputError(f"the extractor reads {extractor.config.bits}-bit keys but the key has {key.bits} bits")
        self.vae_o = copy.deepcopy(model.vae).to(self.device).float().eval().requires_grad_(False)
        self.head: WatermarkHead | None = None
        self.vae_w: torch.nn.Module | None = None
        if isinstance(extractor, SpectralExtractor):
            binding = None if key.binding is None else Binding(bytes.fromhex(key.binding["secret_hex"]))
            self.head = WatermarkHead(spectral=extractor.config, key=key.key, config=HeadConfig(psnr=config.psnr),
                                      binding=binding)
            self.head.to(self.device)
            self.start_head = copy.deepcopy(self.head).eval().requires_grad_(False)  # the analytic mark
            params = list(self.head.parameters())
        else:
            if not self.extractor.whitened:
                raise ModelError("the extractor has no whitening layer; fit it with `medsign train --stage extractor "
                                 "--whiten-images N`")
            self.vae_w = copy.deepcopy(self.vae_o)
            for name, parameter in self.vae_w.named_parameters():
                parameter.requires_grad_(name.startswith(DECODER_PREFIXES))
            params = [p for p in self.vae_w.parameters() if p.requires_grad]
        self.key = torch.from_numpy(key.key.astype(np.float32)).to(self.device)
        self.weights = config.loss_weights
        self.variant = config.ablation.map_variant
        self.attacks = [get_attack(name) for name in config.attacks]
        self.store = Requantize(8)
        self.total = total_steps(config, len(data))
        self.optimizer = torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay)
        self.schedule = schedule(config, self.total)
        self.step = 0
        self.scale = model.vae_scale_factor

    @property
    def layer_kind(self) -> str:
        return SPECTRAL_HEAD if self.head is not None else FINETUNED

    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        from medsign_forensics.diffusion.sampling import decode

        return decode(self.model, latents, vae=vae)

    def watermark(self, latents: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """I_w for a batch: the watermark layer on I_o, or the fine-tuned decoder on x0."""
        if self.head is not None:
            return self.head(rgb_to_grey(original))
        assert self.vae_w is not None
        return self.decode(self.vae_w, latents)

    def batch(self, step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x0, I_o, A_loc or None) for a step, cropped to ``train_size`` when the images are larger."""
        indices = batch_indices(step, n_items=len(self.data), batch=self.config.batch, seed=self.config.seed)
        latents = self.data.latents[indices].to(self.device)
        a_loc = None if self.variant is None else self.data.a_loc(self.variant, indices).to(self.device)
        crop = self.config.train_size // self.scale
        if crop >= latents.shape[2] and crop >= latents.shape[3]:
            return latents, self.data.images[indices].to(self.device, torch.float32), a_loc
        top = int(rng.integers(0, max(0, latents.shape[2] - crop) + 1))
        left = int(rng.integers(0, max(0, latents.shape[3] - crop) + 1))
        latents = latents[:, :, top : top + crop, left : left + crop]
        s = self.scale
        if a_loc is not None:
            a_loc = a_loc[:, :, top * s : (top + crop) * s, left * s : (left + crop) * s]
        if self.head is not None:  # the layer reads I_o itself: crop it, no decoder pass
            images = self.data.images[indices].to(self.device, torch.float32)
            return latents, images[:, :, top * s : (top + crop) * s, left * s : (left + crop) * s], a_loc
        with torch.no_grad():  # D_o of the cropped latents: border effects identical to D_w's
            original = self.decode(self.vae_o, latents)
        return latents, original, a_loc

    def forward(self, step: int) -> tuple[LossTerms, torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """The objective on step ``step``'s batch, attack and crop: (terms, logits, I_w, I_o, attack name).

        A pure function of the step and the current weights, so a test can score one fixed batch before and
        after an optimiser step. For the watermark layer, I_w and I_o are greyscale.
        """
        rng = np.random.default_rng([self.config.seed, 11, step])
        latents, original, a_loc = self.batch(step, rng)
        if self.head is not None:
            original = rgb_to_grey(original)
        attack = self.attacks[int(rng.integers(len(self.attacks)))]
        watermarked = self.watermark(latents, original)
        stored = self.store.differentiable(watermarked)
        if self.head is not None:  # cheap to read: every attack on every step, a less noisy message loss
            logits = torch.cat([self.extractor(rgb_to_grey(a.differentiable(stored, rng))) for a in self.attacks])
            attack_name = "all"
        else:
            logits = self.extractor(rgb_to_grey(attack.differentiable(stored, rng)))
            attack_name = attack.name
        terms = decoder_objective(
            watermarked, original, logits, self.key, a_loc, self.weights, temperature=self.config.msg_temperature
        )
        if self.head is not None and self.config.normalise_terms:
            with torch.no_grad():
                start = self.start_head(original)
                start_logits = torch.cat([
                    self.extractor(a.differentiable(
                        self.store.differentiable(start), np.random.default_rng([self.config.seed, 11, step])
                    ))
                    for a in self.attacks
                ])
                reference = decoder_objective(start, original, start_logits, self.key, a_loc, self.weights,
                                              temperature=self.config.msg_temperature)
            terms = self._normalised(terms, reference)
        return terms, logits, watermarked, original, attack_name

    def _normalised(self, terms: LossTerms, reference: LossTerms) -> LossTerms:
        """Each term divided by its value for the untrained layer on the same batch and attacks, so that the
        paper's weights trade relative changes against each other whatever the scale of each term."""
        names = ("img", "msg", "tv", "pre")
        scaled = {name: getattr(terms, name) / max(float(getattr(reference, name)), 1e-12) for name in names}
        total = sum(getattr(self.weights, name) * scaled[name] for name in names)
        return LossTerms(total=total, **scaled)

    def train_step(self) -> tuple[dict[str, float], float, float, str]:
        """One optimiser step; returns (loss values, bit accuracy, PSNR of I_w vs I_o, attack name)."""
        (self.head if self.head is not None else self.vae_w).train()  # type: ignore[union-attr]
        self.schedule.apply(self.optimizer, self.config.peak_lr, self.step)
        terms, logits, watermarked, original, attack = self.forward(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.step += 1
        accuracy = float(((logits.detach() > 0).float() == self.key).float().mean())
        return terms.values(), accuracy, _psnr(watermarked.detach(), original), attack

    def trainable_state(self) -> dict[str, torch.Tensor]:
        if self.head is not None:
            return {name: t.detach().cpu().clone() for name, t in self.head.state_dict().items()}
        assert self.vae_w is not None
        return decoder_state(self.vae_w)

    @property
    def lr(self) -> float:
        """The rate of the last step taken."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue: the trainable tensors, the optimiser and the step."""
        return {"step": self.step, "layer": self.layer_kind, "decoder": self.trainable_state(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], *, path: Any = None) -> None:
        """Continue from :meth:`state_dict` (strict keys and shapes: ModelError)."""
        if self.head is not None:
            load_state(self.head, state["decoder"], what="watermark layer tensors", target="the layer's config",
                       path=path)
        else:
            assert self.vae_w is not None
            load_decoder_state(self.vae_w, state["decoder"], path=path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


@torch.no_grad()
def measure_held_out(trainer: DecoderTrainer, data: CachedData, *, seed: int, batch: int = 8) -> dict[str, Any]:
    """PSNR/SSIM against D_o and blind bit accuracy after each Table-1 attack (exact forms, 8-bit storage on
    both sides), on held-out items: what a deployment records about itself and ``generate`` checks."""
    from medsign_forensics.attacks.library import TABLE1_ATTACKS
    from medsign_forensics.watermark.extractor_io import extract_bits
    from medsign_forensics.watermark.fidelity import psnr, ssim

    key = trainer.key.cpu().numpy().astype(np.uint8)
    rng = np.random.default_rng([seed, 23])
    originals: list[np.ndarray] = []
    marked: list[np.ndarray] = []
    for start in range(0, len(data), batch):
        latents = data.latents[start : start + batch].to(trainer.device)
        original = rgb_to_grey(data.images[start : start + batch].to(trainer.device, torch.float32))
        watermarked = rgb_to_grey(trainer.watermark(latents, original))
        originals += [trainer.store.exact(x) for x in original[:, 0].cpu().numpy()]
        marked += [trainer.store.exact(x) for x in watermarked[:, 0].cpu().numpy()]
    accuracy: dict[str, list[float]] = {}
    for attack in TABLE1_ATTACKS:
        attacked = [trainer.store.exact(attack.exact(image, rng)) for image in marked]
        bits, _ = extract_bits(trainer.extractor, attacked)
        accuracy[attack.name] = [float(np.mean(row == key)) for row in bits]
    return {
        "reports": len(data),
        "psnr_db": float(np.mean([psnr(o, m) for o, m in zip(originals, marked)])),
        "ssim": float(np.mean([ssim(o, m) for o, m in zip(originals, marked)])),
        "bit_accuracy": {name: float(np.mean(v)) for name, v in accuracy.items()},
        "bit_accuracy_p05": {name: float(np.percentile(v, 5)) for name, v in accuracy.items()},
        "bit_accuracy_min": {name: float(np.min(v)) for name, v in accuracy.items()},
    }
