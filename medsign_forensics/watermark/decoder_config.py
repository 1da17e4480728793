"""The settings of a decoder fine-tuning run (stage 2) and the paper's ablations (Table 2).

Recipe defaults: AdamW, peak lr 5e-4 (the dataset preset's), linear warm-up over ``warmup_steps`` (20, at most a
fifth of the run), cosine to ``min_lr`` (1e-6) (Stable Signature); 2 epochs over the training reports (the
paper); batch 4; one attack per batch drawn from :data:`DEFAULT_TRAIN_ATTACKS`, which covers the Table 1
conditions (see :mod:`medsign_forensics.watermark.train_decoder` for why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.config import LossWeights, preset
from medsign_forensics.configio import Derived, config_from_dict, config_to_dict
from medsign_forensics.errors import InputError
from medsign_forensics.localization.cache import DEFAULT_REPORTS, MapVariant
from medsign_forensics.watermark.head import HeadConfig

DEFAULT_TRAIN_ATTACKS: tuple[str, ...] = (
    "none",
    "brightness_x2",
    "crop_random_area0.5",
    "jpeg_q50",
    "rotate_25",
    "resize_edge0.7",
)
#: Fields a resumed run may change: they do not alter what has been trained so far.
RESUMABLE_CHANGES = frozenset({"device", "log_every", "checkpoint_every", "eval_reports"})


class Ablation(str, Enum):
    """The paper's ablations (Table 2) and Stable Signature mode."""

    NONE = "none"
    NO_CAS = "no-cas"
    NO_AAS = "no-aas"
    NO_TV = "no-tv"
    NO_PRE = "no-pre"
    STABLE_SIGNATURE = "stable-signature"

    @property
    def map_variant(self) -> MapVariant | None:
        """The map L_pre uses; None when L_pre is off."""
        if self in (Ablation.NO_PRE, Ablation.STABLE_SIGNATURE):
            return None
        return {Ablation.NO_CAS: MapVariant.NO_CAS, Ablation.NO_AAS: MapVariant.NO_AAS}.get(self, MapVariant.MEDSIGN)

    def apply(self, weights: LossWeights) -> LossWeights:
        """The loss weights this ablation trains with."""
        if self is Ablation.NO_TV:
            return replace(weights, tv=0.0)
        if self is Ablation.NO_PRE:
            return replace(weights, pre=0.0)
        if self is Ablation.STABLE_SIGNATURE:
            return replace(weights, tv=0.0, pre=0.0)
        return weights


@dataclass(frozen=True)
class DecoderTrainConfig:
    """Everything that defines a decoder fine-tuning run; recorded in deployment.json and the checkpoint."""

    dataset: str = "cxr"
    weights: LossWeights | None = None  # None: the dataset preset's
    ablation: Ablation = Ablation.NONE
    reports: str = DEFAULT_REPORTS
    n_reports: int | None = None  # None: the whole training split
    epochs: int = 2
    steps: int | None = None  # None: epochs x ceil(n / batch)
    batch: int = 4
    lr: float | None = None  # None: the preset's (5e-4)
    warmup_steps: int = 20
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    msg_temperature: float = 1.0
    attacks: tuple[str, ...] = DEFAULT_TRAIN_ATTACKS
    train_size: int = 256
    seed: int = 0
    device: str = "cpu"
    sample_steps: int = 25
    guidance_scale: float = 4.0
    sample_batch: int = 4
    log_every: int = 5
    checkpoint_every: int = 50
    psnr: float = 43.0  # the watermark layer's budget (spectral extractor only): SSIM >= 0.96 on mini-cxr
    normalise_terms: bool = True  # watermark layer only: each loss term divided by its first-batch value
    eval_reports: int = 32  # held-out reports measured at the end (0: none)

    def __post_init__(self) -> None:
        preset(self.dataset)  # unknown dataset -> InputError
        try:
            object.__setattr__(self, "ablation", Ablation(self.ablation))
        except ValueError:
            known = ", ".join(a.value for a in Ablation)
            raise InputError(f"unknown ablation {self.ablation!r}; choose one of: {known}") from None
        object.__setattr__(self, "attacks", tuple(self.attacks))
        if self.batch < 1 or self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise InputError(
                f"need batch >= 1, epochs >= 1 and steps >= 1; got {self.batch}, {self.epochs}, {self.steps}"
            )
        if self.n_reports is not None and self.n_reports < 1:
            raise InputError(f"--n-reports must be at least 1, got {self.n_reports}")
        if self.train_size < 8 or self.train_size % 8:
            raise InputError(f"the training size must be a positive multiple of 8 pixels, got {self.train_size}")
        if self.msg_temperature <= 0 or (self.lr is not None and self.lr <= 0) or self.min_lr < 0:
            raise InputError("the learning rate and message temperature must be positive, min_lr not negative")
        if not self.attacks:
            raise InputError("the training attack set is empty; give at least 'none'")
        for name in self.attacks:
            get_attack(name)
        if self.sample_steps < 1 or self.sample_batch < 1:
            raise InputError("sampling needs at least one step and a batch of at least one report")
        if self.eval_reports < 0:
            raise InputError(f"--eval-reports must not be negative, got {self.eval_reports}")
        HeadConfig(psnr=self.psnr)  # out-of-range budget -> InputError

    @property
    def peak_lr(self) -> float:
        return preset(self.dataset).learning_rate if self.lr is None else self.lr

    @property
    def loss_weights(self) -> LossWeights:
        """The weights actually trained with: the preset's (or the override), with the ablation applied."""
        return self.ablation.apply(self.weights or preset(self.dataset).weights)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self, derived=_DERIVED)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecoderTrainConfig:
        return config_from_dict(cls, data, derived=_DERIVED)


#: Written beside the fields for whoever reads deployment.json (the weights and learning rate actually trained
#: with); checked against the fields on reading (see :mod:`medsign_forensics.configio`).
_DERIVED: Derived = {
    "effective_weights": lambda config: config.loss_weights,
    "peak_lr": lambda config: config.peak_lr,
}
