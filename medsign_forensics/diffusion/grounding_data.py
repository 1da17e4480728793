"""What grounded training of mini-cxr reads besides the images and captions.

- :class:`MaskCache`: each cached render's lesion masks on the latent grid, one plane per finding kind (the union
  of that kind's drawn lesions; the fraction of each latent cell inside them, stored as uint8), made once per run
  like the render cache and resumable the same way. The phantom renderer's masks are exact, so no mask is guessed.
- :class:`CaptionWords`: per caption, the prompt token positions of its medical words
  (:func:`~medsign_forensics.reports.words.medical_words`, the words the localization map reads) and the finding
  kinds each serves; negated and hedged findings have no word, the empty (dropped) caption none at all.
- :class:`GroundingData`: a batch's :class:`~medsign_forensics.diffusion.grounding.GroundingTargets`. A word is
  grounded on the union of the masks of the kinds it serves, as the localization benchmark scores a kind's map
  on the kind's union mask; a word whose kinds drew nothing in this render is not grounded.

Nothing here draws random numbers, so a grounded run sees the same batches, noise and timesteps as the ungrounded
run of the same config (the ablation differs in the loss alone), and resuming needs no extra state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics.diffusion.data import RenderCache, StudySource
from medsign_forensics.diffusion.grounding import GroundingTargets
from medsign_forensics.diffusion.layout import KINDS, layout_planes
from medsign_forensics.errors import InputError
from medsign_forensics.reports.findings import FindingKind
from medsign_forensics.reports.words import medical_words, word_tokens
from medsign_forensics.training.progress import ProgressFn

MASK_TASK = "rendering lesion masks"

WordPositions = tuple[tuple[tuple[int, ...], frozenset[FindingKind]], ...]


class MaskCache(RenderCache):
    """Per render, uint8 (kinds, grid, grid): 255 x the fraction of each cell inside that kind's lesions."""

    stem = "masks"
    what = "mask cache"

    def __init__(self, folder: Path, *, count: int, size: int, grid: int) -> None:
        super().__init__(folder, count=count, size=size)
        self.grid = grid

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, len(KINDS), self.grid, self.grid)

    def settings(self) -> dict[str, object]:
        return {"size": self.size, "grid": self.grid, "kinds": [kind.value for kind in KINDS]}

    def draw(self, source: StudySource, index: int, seed: int) -> np.ndarray:
        masks = source.masks(index, seed=seed, size=self.size, grid=self.grid)  # type: ignore[attr-defined]
        return layout_planes(masks, self.grid)


class CaptionWords:
    """caption -> ((token positions, kinds served), ...) for its medical words that reached the model (memoised:
    a run draws a few thousand distinct captions many times)."""

    def __init__(self, tokenizer: Any, *, locations: bool) -> None:
        self.tokenizer = tokenizer
        self.locations = locations
        self._memo: dict[str, WordPositions] = {}

    def __call__(self, caption: str) -> WordPositions:
        found = self._memo.get(caption)
        if found is None:
            words = medical_words(caption, locations=self.locations) if caption.strip() else []
            tokens, _ = word_tokens(self.tokenizer, caption, words)
            found = tuple((t.positions, t.word.kinds) for t in tokens)
            self._memo[caption] = found
        return found


class GroundingData:
    """The grounding targets of a batch, from the mask cache's rows and the captions drawn for them."""

    def __init__(self, masks: np.ndarray, words: CaptionWords, *, grid: int) -> None:
        self.masks = masks
        self.words = words
        self.grid = grid

    def targets(self, rows: Sequence[int], captions: Sequence[str]) -> GroundingTargets:
        per_item = []
        for row, caption in zip(rows, captions, strict=True):
            planes = self.masks[int(row)]
            grounded = []
            for positions, kinds in self.words(caption):
                mask = np.max([planes[KINDS.index(kind)] for kind in kinds], axis=0)
                if mask.any():
                    grounded.append((positions, mask.astype(np.float32) / 255.0))
            per_item.append(grounded)
        return GroundingTargets.build(per_item, self.grid)

    def layout(self, rows: Sequence[int]) -> torch.Tensor:
        """The layouts (B, kinds, grid, grid) of these renders (:mod:`~medsign_forensics.diffusion.layout`)."""
        return torch.from_numpy(self.masks[np.asarray(rows)].astype(np.float32) / 255.0)


def open_grounding(
    out: Path,
    source: StudySource,
    *,
    renders_per_report: int,
    seed: int,
    image_size: int,
    latent_size: int,
    tokenizer: Any,
    locations: bool,
    progress: ProgressFn | None = None,
) -> GroundingData:
    """Build (or finish) the run's mask cache in ``out`` and return the batch-target maker."""
    if not callable(getattr(source, "masks", None)):
        raise InputError("grounded and layout training need each render's lesion masks, and this study source "
                         "gives none")
    cache = MaskCache(out, count=len(source) * renders_per_report, size=image_size, grid=latent_size)
    cache.build(source, renders_per_report=renders_per_report, seed=seed, progress=progress, task=MASK_TASK)
    return GroundingData(cache.images(), CaptionWords(tokenizer, locations=locations), grid=latent_size)
