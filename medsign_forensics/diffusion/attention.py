"""The U-Net's cross-attention probabilities, for the two readers of them: the localization map's capture
(:mod:`medsign_forensics.localization.capture`, no gradient, summed over heads and steps) and grounded training
(:mod:`medsign_forensics.diffusion.grounding`, with gradient, one U-Net call).

The default diffusers processor uses a fused scaled-dot-product kernel and never forms the probability matrix, so
a reader wraps each cross-attention layer's ORIGINAL processor (which still computes the layer's output, bit for
bit) and recomputes ``softmax(Q K^T * scale)`` from the same inputs (:func:`attention_probabilities`).
Cross-attention layers are the ``...attn2`` modules of every transformer block, and also ``...attn1`` in blocks
built with ``only_cross_attention`` (mini-cxr's highest-resolution level); a layer qualifies when diffusers marks
it ``is_cross_attention`` (:func:`wrap_cross_attention`).

A processor sees only a flattened sequence; :func:`layer_grid` recovers the spatial grid from the latent's
height and width by halving them, rounding up, until the product equals the sequence length, exactly as the
U-Net's stride-2 convolutions do. No square size is assumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import torch

PROCESSOR_SUFFIX = ".processor"


def layer_grid(sequence_length: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer whose flattened sequence has ``sequence_length`` positions.

    Each U-Net level halves the grid with a stride-2, padding-1 convolution, i.e. ``ceil(n / 2)``.
    """
    height, width = latent_size
    while height * width > sequence_length and (height > 1 or width > 1):
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    if height * width != sequence_length:
        raise ValueError(
            f"a cross-attention layer has {sequence_length} positions, which is no power-of-two reduction of "
            f"the {latent_size[0]}x{latent_size[1]} latent; this U-Net layout is not supported"
        )
    return height, width


def attention_probabilities(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
    keep: slice | torch.Tensor,
    *,
    sum_heads: bool = True,
) -> torch.Tensor:
    """softmax(Q K^T * scale) in fp32 for the batch rows ``keep``: (B_keep, N, T) summed over heads, or
    (B_keep, heads, N, T) when ``sum_heads`` is False. Differentiable; callers that only read it use no_grad."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        batch, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    full_batch = hidden_states.shape[0]
    hidden_states = hidden_states[keep]
    encoder_hidden_states = encoder_hidden_states[keep]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query = attn.to_q(hidden_states)
    key = attn.to_k(encoder_hidden_states)
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, key.shape[-2], full_batch, out_dim=4)
        scores = scores + mask[keep].float()
    probs = scores.softmax(dim=-1)
    return probs.sum(dim=1) if sum_heads else probs


def wrap_cross_attention(unet: Any, wrap: Callable[[Any, str], Any]) -> dict[str, Any]:
    """Install ``wrap(original_processor, layer_name)`` on every cross-attention layer of a diffusers
    UNet2DConditionModel (self-attention keeps its processor); return the original processors, which
    ``unet.set_attn_processor(dict(originals))`` puts back. ValueError when the U-Net has no cross-attention."""
    original = dict(unet.attn_processors)
    replacement = {}
    for key, processor in original.items():
        name = key[: -len(PROCESSOR_SUFFIX)]
        cross = bool(getattr(unet.get_submodule(name), "is_cross_attention", False))
        replacement[key] = wrap(processor, name) if cross else processor
    if all(value is original[key] for key, value in replacement.items()):
        raise ValueError("this U-Net has no cross-attention layers to capture")
    unet.set_attn_processor(replacement)
    return original


class _ObservingProcessor:
    """Wraps a layer's original processor: the original computes the output (bit for bit), then ``observe`` sees
    the inputs of every cross-attention call."""

    def __init__(self, inner: Any, *, name: str, observe: Callable[..., None]) -> None:
        self.inner = inner
        self.name = name
        self.observe = observe

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        output = self.inner(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            temb=temb,
            **kwargs,
        )
        if encoder_hidden_states is not None:
            self.observe(self.name, attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return output


class CrossAttentionHooks:
    """Base of the two readers: a context manager that, while a diffusers U-Net runs inside it, calls
    :meth:`_observe` on every cross-attention call and :meth:`_before_unet` before every U-Net call. The original
    processors and the hook are removed on exit, even after an exception."""

    unet: Any  # a diffusers UNet2DConditionModel (attn_processors and set_attn_processor are not nn.Module's)
    _original: dict[str, Any] | None = None
    _hook: Any = None

    def __enter__(self) -> Self:
        self._original = wrap_cross_attention(
            self.unet, lambda processor, name: _ObservingProcessor(processor, name=name, observe=self._observe)
        )
        self._hook = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._original is not None:
            self.unet.set_attn_processor(dict(self._original))
            self._original = None

    def _before_unet(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    def _observe(self, name: str, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> None:
        raise NotImplementedError
