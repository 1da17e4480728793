"""The latent layer's half of verification: invert the image once, then test every registered latent key.

Only keys whose registry row holds a latent layer for the loaded base model are candidates (the layer is read by
inverting the model that wrote it). The image is inverted once (the costly part, :class:`LatentReader`); each
candidate then removes its own keystream and votes, which is cheap. The p-value of M matching bits of k is the
exact Binomial(k, 1/2) tail (the null of :mod:`medsign_forensics.watermark.latent`), corrected for the number
of candidates with the policy's family-wise correction, exactly as the decoder layer's statistics are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsign_forensics.key import p_value
from medsign_forensics.provenance.entries import RegistryEntry
from medsign_forensics.provenance.layers import latent_layers
from medsign_forensics.provenance.registry import Registry


@dataclass(frozen=True)
class LatentBest:
    """The best-matching latent key for one image."""

    entry: RegistryEntry
    matched_bits: int
    bits: int
    p_value: float
    candidates: int
    notes: tuple[str, ...]


class LatentVerifier:
    """Reads the latent layer of images against one registry's latent keys, with one loaded base model."""

    def __init__(self, *, registry: Registry, model: Any, steps: int) -> None:
        from medsign_forensics.watermark.latent import LatentConfig, LatentMark
        from medsign_forensics.watermark.latent_reader import LatentReader

        layers = latent_layers(registry)
        self.reader = LatentReader(model, steps=steps)
        self.entries: list[RegistryEntry] = []
        self.marks: list[Any] = []
        for entry in registry.entries():
            layer = layers.get(entry.provenance_id)
            if layer is None or layer.base_weights_sha256 != model.weights_sha256:
                continue
            self.entries.append(entry)
            self.marks.append(LatentMark(key=entry.key, secret=layer.secret, config=LatentConfig.from_dict(
                {**layer.config, "inversion_steps": steps})))
        self.model_name = str(model.name)

    def __len__(self) -> int:
        return len(self.entries)

    def best(self, pixels: np.ndarray, *, geometry: tuple[float, float] | None = None) -> LatentBest | None:
        """Invert ``pixels`` (H, W) and return the best candidate (None when there are no candidates)."""
        if not self.entries:
            return None
        z, mask, notes = self.reader.noise(pixels, geometry=geometry)
        counts = np.array([int((mark.read(z, mask).bits == mark.key).sum()) for mark in self.marks])
        p_values = np.array([p_value(int(c), int(mark.key.size)) for c, mark in zip(counts, self.marks)])
        best = int(np.lexsort((-counts, p_values))[0])
        return LatentBest(entry=self.entries[best], matched_bits=int(counts[best]),
                          bits=int(self.marks[best].key.size), p_value=float(p_values[best]),
                          candidates=len(self.entries), notes=notes)


def open_latent_verifier(registry: Registry, model: str | Path | Any | None,
                         inversion_steps: int | None) -> LatentVerifier:
    """A :class:`LatentVerifier` over ``registry`` with ``model`` (a DiffusionModel, a folder, or None: mini-cxr)."""
    from medsign_forensics.diffusion import load_model
    from medsign_forensics.watermark.latent import DEFAULT_INVERSION_STEPS

    loaded = model if model is not None and not isinstance(model, (str, Path)) else load_model(model)
    return LatentVerifier(registry=registry, model=loaded, steps=inversion_steps or DEFAULT_INVERSION_STEPS)
