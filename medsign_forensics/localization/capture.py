"""Capture the U-Net's cross-attention probabilities while it runs, without changing what it computes.

The capturing processor wraps each cross-attention layer's ORIGINAL processor (installed by
:func:`~medsign_forensics.diffusion.attention.wrap_cross_attention`; self-attention keeps its processor): the
original produces the output, so the U-Net's result is bit for bit what it was; then, on selected steps only, the
probabilities of the conditional rows are recomputed in fp32
(:func:`~medsign_forensics.diffusion.attention.attention_probabilities`) and added, summed over heads, to a
running sum for that layer. Nothing is stored per step. Each layer's spatial grid is recovered from the latent's
height and width (recorded by a pre-forward hook on the U-Net) by :func:`layer_grid`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from medsign_forensics.diffusion.attention import CrossAttentionHooks, attention_probabilities, layer_grid

StepSelector = Callable[[int, float], bool]
"""Decides from (step index, timestep) whether a U-Net call is captured; step index counts U-Net calls from 0."""


def every_step(step_index: int, timestep: float) -> bool:
    """Capture every U-Net call (the paper sums over all time steps)."""
    return True


@dataclass(frozen=True)
class LayerAttention:
    """One cross-attention layer's running sum.

    ``sums`` has shape (B, T, h, w): for each conditional batch item and text token, the attention
    probability at every position of the layer's grid, summed over the layer's ``heads`` and the captured steps.
    """

    name: str
    heads: int
    sums: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.sums.shape[-2]), int(self.sums.shape[-1])


@dataclass(frozen=True)
class CapturedAttention:
    """Everything the capture accumulated: per-layer sums, the latent size and how many steps were summed."""

    layers: dict[str, LayerAttention]
    latent_size: tuple[int, int]
    steps: int
    batch: int

    @property
    def tokens(self) -> int:
        return next(iter(self.layers.values())).sums.shape[1]


class CrossAttentionCapture(CrossAttentionHooks):
    """Context manager that records cross-attention probabilities of a UNet2DConditionModel.

    ``conditional_batch`` is the number of conditional samples per U-Net call. Under classifier-free
    guidance the U-Net batch is ``[unconditional, conditional]`` (twice that number) and only the second half
    is kept; with guidance off the batch equals it and every row is kept; any other batch size is an error.
    ``select`` picks the U-Net calls (steps) that are summed. On exit the original processors are restored,
    even after an exception.
    """

    def __init__(self, unet: torch.nn.Module, *, conditional_batch: int, select: StepSelector = every_step) -> None:
        if conditional_batch < 1:
            raise ValueError(f"conditional_batch must be at least 1, not {conditional_batch}")
        # a diffusers UNet2DConditionModel: attn_processors and set_attn_processor are not nn.Module's
        self.unet: Any = unet
        self.conditional_batch = conditional_batch
        self.select = select
        self.recording = False
        self.steps_seen = 0
        self.steps_captured = 0
        self.latent_size: tuple[int, int] | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._heads: dict[str, int] = {}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, traceback)
        self.recording = False

    def _observe(self, name: str, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> None:
        if not self.recording:
            return
        with torch.no_grad():
            keep = self.conditional_rows(hidden_states.shape[0])
            probs = attention_probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb, keep)
        self._add(name, attn.heads, probs)

    def _before_unet(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        size = (int(sample.shape[-2]), int(sample.shape[-1]))
        if self.latent_size is not None and size != self.latent_size and self._sums:
            raise ValueError(
                f"the latent size changed from {self.latent_size} to {size} within one capture; "
                "use a new capture for each image size"
            )
        self.latent_size = size
        step = self.steps_seen
        self.steps_seen += 1
        t = float(torch.as_tensor(timestep).reshape(-1)[0].item())
        self.recording = bool(self.select(step, t))
        if self.recording:
            self.steps_captured += 1

    def conditional_rows(self, batch: int) -> slice:
        """The rows of a U-Net batch that carry the conditional (report) embedding."""
        if batch == self.conditional_batch:
            return slice(None)
        if batch == 2 * self.conditional_batch:
            return slice(self.conditional_batch, None)
        raise ValueError(
            f"the U-Net batch has {batch} rows, but the capture expects {self.conditional_batch} conditional rows "
            f"(or twice that under classifier-free guidance)"
        )

    def _add(self, name: str, heads: int, probs: torch.Tensor) -> None:
        current = self._sums.get(name)
        self._sums[name] = probs if current is None else current + probs
        self._heads[name] = heads

    def reset(self) -> None:
        """Forget everything accumulated so far (the processors stay installed)."""
        self._sums.clear()
        self._heads.clear()
        self.steps_seen = 0
        self.steps_captured = 0
        self.latent_size = None

    def result(self) -> CapturedAttention:
        """The accumulated sums, each reshaped to its layer's (B, T, h, w) grid."""
        if not self._sums or self.latent_size is None:
            raise ValueError("nothing was captured: run the U-Net inside the capture, on at least one selected step")
        layers = {}
        for name, sums in self._sums.items():
            batch, positions, tokens = sums.shape
            height, width = layer_grid(positions, self.latent_size)
            grid = sums.transpose(1, 2).reshape(batch, tokens, height, width)
            layers[name] = LayerAttention(name=name, heads=self._heads[name], sums=grid)
        return CapturedAttention(
            layers=layers, latent_size=self.latent_size, steps=self.steps_captured, batch=self.conditional_batch
        )
