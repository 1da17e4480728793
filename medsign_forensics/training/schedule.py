"""The one learning-rate schedule of every trainer: linear warm-up, then cosine decay to a floor.

Warm-up keeps the first AdamW steps (whose second-moment estimates are still poor) small; the cosine tail lets
a run end on small steps instead of stopping in the middle of large ones. A floor of 1 gives warm-up followed
by a constant rate. The factor is a pure function of the step, so a resumed run needs no schedule state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupCosine:
    """Factor of the peak rate at each step: ``(step + 1) / warmup`` during warm-up, then cosine from 1 down
    to ``floor`` at step ``total``, and ``floor`` after it."""

    total: int
    warmup: int = 0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"need warmup >= 0 and floor in [0, 1], got {self.warmup} and {self.floor}")

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, peak: float, step: int) -> float:
        """Set every parameter group's rate for ``step``; returns it."""
        lr = peak * self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
