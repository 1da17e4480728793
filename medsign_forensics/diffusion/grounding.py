"""Token-grounded cross-attention (TokenCompose, Wang et al., CVPR 2024), with the phantom world's exact masks.

During a training step the U-Net's cross-attention probabilities are recomputed, with gradient, for the prompt
tokens of every finding word and pushed onto that finding's lesion mask. It is read where the localization map
reads it: every cross-attention layer (:mod:`medsign_forensics.diffusion.attention`, the same machinery as the
map's capture), each layer's map being the mean over its heads of ``softmax(Q K^T * scale)`` for the token (the
map sums heads; the mean differs by a constant).

Per grounded token i with map A_i over the layer's positions u and mask M_i (the fraction of each cell inside the
lesion, area-averaged from the latent grid to the layer's grid; with ``peak`` targets, scaled so its fullest cell
is 1, see :class:`~medsign_forensics.diffusion.configs.GroundingConfig`):

- L_token = mean_i (1 - sum_u A_iu M_iu / sum_u A_iu)^2: the share of the token's attention outside its mask,
  squared as in TokenCompose (the token loss of layout guidance it builds on);
- L_pixel = mean_i mean_u BCE(A_iu / max_u A_iu, M_iu): the map scaled so its peak is 1, against the mask, so
  the peak must lie inside the lesion and the rest of the image must stay cold.

Both are averaged over the layers. The wrapped processors still compute every layer's output with the original
(fused) kernel, so the denoising prediction is bit for bit the ungrounded one; the recomputed probabilities equal
the ones the kernel used, so the gradient is the one of the maps themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsign_forensics.diffusion.attention import CrossAttentionHooks, attention_probabilities, layer_grid

_EPS = 1e-6


@dataclass(frozen=True)
class GroundingTargets:
    """Entry e grounds prompt token ``positions[e]`` of batch item ``items[e]`` onto ``masks[e]``: (E, h, w) at
    the latent's size, each cell the fraction of it inside the lesion, in [0, 1]."""

    items: torch.Tensor
    positions: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def build(
        cls, per_item: Sequence[Sequence[tuple[Sequence[int], np.ndarray]]], latent_size: int
    ) -> GroundingTargets:
        """From, per batch item, (token positions of a word, its mask (latent_size, latent_size)) pairs."""
        items, positions, masks = [], [], []
        for item, words in enumerate(per_item):
            for word_positions, mask in words:
                for position in word_positions:
                    items.append(item)
                    positions.append(int(position))
                    masks.append(np.asarray(mask, dtype=np.float32))
        if not masks:
            empty = torch.zeros(0, dtype=torch.long)
            return cls(empty, empty.clone(), torch.zeros(0, latent_size, latent_size))
        return cls(
            torch.as_tensor(items, dtype=torch.long),
            torch.as_tensor(positions, dtype=torch.long),
            torch.from_numpy(np.stack(masks)),
        )

    def to(self, device: torch.device) -> GroundingTargets:
        return GroundingTargets(self.items.to(device), self.positions.to(device), self.masks.to(device))


def lesion_cells(targets: GroundingTargets, batch: int) -> torch.Tensor:
    """(batch, h, w): per batch item, 1 for each latent cell that a lesion its caption names touches (the union
    of its grounded words' masks), else 0; all 0 for items that ground nothing."""
    size = targets.masks.shape[-2:]
    cells = torch.zeros((batch, *size), dtype=targets.masks.dtype, device=targets.masks.device)
    if len(targets):
        index = targets.items[:, None, None].expand(-1, *size)
        cells.scatter_reduce_(0, index, targets.masks, reduce="amax")
    return (cells > 0).to(targets.masks.dtype)


@dataclass(frozen=True)
class GroundingLosses:
    """The two grounding losses (differentiable scalars), the mean share of a grounded token's attention that
    lies inside its mask (a plain number, for logs), and how many layer terms were averaged."""

    token: torch.Tensor
    pixel: torch.Tensor
    inside: float
    layers: int


def layer_losses(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_token and L_pixel of one layer, and the inside-mask share per entry; ``maps`` and ``masks`` (E, N)."""
    total = maps.sum(dim=-1).clamp_min(_EPS)
    inside = (maps * masks).sum(dim=-1) / total
    token = ((1 - inside) ** 2).mean()
    peak = maps.amax(dim=-1, keepdim=True).clamp_min(_EPS)
    scaled = (maps / peak).clamp(_EPS, 1 - _EPS)
    # written out: F.binary_cross_entropy refuses to run under CUDA autocast
    pixel = -(masks * scaled.log() + (1 - masks) * (1 - scaled).log()).mean()
    return token, pixel, inside


class GroundingCapture(CrossAttentionHooks):
    """Context manager: while the U-Net runs inside it, every cross-attention layer adds its grounding losses
    for ``targets``; :meth:`losses` averages them. The original processors come back on exit, even after an
    exception. The latent's size is read by a pre-forward hook (layer grids are derived from it). ``peak``: each
    mask, once on a layer's grid, is scaled so its fullest cell is 1 (``GroundingConfig.target`` is
    ``GroundingTarget.PEAK``)."""

    def __init__(self, unet: torch.nn.Module, targets: GroundingTargets, *, peak: bool = False) -> None:
        if len(targets) == 0:
            raise ValueError("GroundingCapture needs at least one grounded token")
        self.unet: Any = unet  # a diffusers UNet2DConditionModel (attn_processors is not nn.Module's)
        self.targets = targets
        self.peak = peak
        self.rows = torch.unique(targets.items)  # sorted: only the batch items with a grounded token are read
        self.row_of_entry = torch.searchsorted(self.rows, targets.items)
        self.latent_size: tuple[int, int] = (int(targets.masks.shape[-2]), int(targets.masks.shape[-1]))
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self._token: list[torch.Tensor] = []
        self._pixel: list[torch.Tensor] = []
        self._inside: list[torch.Tensor] = []

    def _observe(self, name: str, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> None:
        probs = attention_probabilities(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, self.rows, sum_heads=False
        )
        # (rows, heads, N, T) -> the grounded tokens' maps, mean over heads: (E, N)
        self._add(probs[self.row_of_entry, :, :, self.targets.positions].mean(dim=1))

    def _before_unet(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        size = (int(sample.shape[-2]), int(sample.shape[-1]))
        if size != self.latent_size:
            raise ValueError(f"the grounding masks are {self.latent_size} but the U-Net runs on a {size} latent")

    def masks_for(self, positions: int) -> torch.Tensor:
        """The targets' masks on the grid of a layer with ``positions`` cells, flattened: (E, positions)."""
        grid = layer_grid(positions, self.latent_size)
        if grid not in self._masks:
            masks = self.targets.masks.float()
            if grid != self.latent_size:
                masks = F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0]
            if self.peak:
                masks = masks / masks.flatten(1).amax(1).clamp_min(_EPS)[:, None, None]
            self._masks[grid] = masks.reshape(masks.shape[0], -1)
        return self._masks[grid]

    def _add(self, maps: torch.Tensor) -> None:
        token, pixel, inside = layer_losses(maps, self.masks_for(int(maps.shape[-1])))
        self._token.append(token)
        self._pixel.append(pixel)
        self._inside.append(inside.detach())

    def losses(self) -> GroundingLosses:
        if not self._token:
            raise ValueError("no cross-attention layer ran inside the grounding capture")
        return GroundingLosses(
            token=torch.stack(self._token).mean(),
            pixel=torch.stack(self._pixel).mean(),
            inside=float(torch.stack(self._inside).mean()),
            layers=len(self._token),
        )
