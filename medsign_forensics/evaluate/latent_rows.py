"""The rows "Gaussian Shading" and "MedSign + Gaussian Shading": the latent layer in Table 1 and Table 2.

The latent layer changes the initial noise, so its images are NEW samples of the same held-out reports with the
same seeds: they are not compared pixel for pixel with the cached originals (no PSNR, no lesion-region change for
"Gaussian Shading"; "MedSign + Gaussian Shading" is measured against its own plain-decoded sample, i.e. the
decoder layer's change). Table 2 compares their finding confidences with the originals of the same reports, which
includes the model's seed-to-seed variation (benchmarks/latent_layer.py measures that floor).

Detection: "Gaussian Shading" reads the latent layer only (no pilots: geometry is not undone). "MedSign +
Gaussian Shading" reads both layers as ``verify --layers decoder,latent`` does (the pilots' rotation and scale
undone before inversion), counts the layer that matches the key better, and is judged at half the target
false-positive rate (Bonferroni over the two layers). It measures the pair's robustness as evidence: verify
itself attributes through the decoder layer only (the latent layer alone is at most inconclusive, and the
decoder layer must also be bound to the image), so for verdicts this row is an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsign_forensics.evaluate.methods import Detector, Method, MethodKind, Role
from medsign_forensics.key import match_counts
from medsign_forensics.training.progress import ProgressFn, notify
from medsign_forensics.watermark.deployment import Deployment

GS_TITLE = "Gaussian Shading"
BOTH_TITLE = "MedSign + Gaussian Shading"
BATCH = 8  # images inverted together


def latent_mark(deployment: Deployment, seed: int) -> Any:
    """The deployment's own latent layer, or (without one) its key under a secret drawn from ``seed``."""
    from medsign_forensics.watermark.latent import ISSUED_CONFIG, LatentMark

    mark = deployment.latent_mark()
    if mark is None:
        mark = LatentMark(key=deployment.key, secret=np.random.default_rng([seed, 13]).bytes(32), config=ISSUED_CONFIG)
    return mark


def latent_detector(reader: Any, mark: Any, extractor: Any | None = None) -> Detector:
    """Latent-layer bits; with a spectral ``extractor``, its pilots' geometry is undone first. An image the layer
    cannot read (almost all of it clipped) reads as the key's complement: 0 matching bits, never detected."""
    from medsign_forensics.watermark.spectral import SpectralExtractor

    def detect(images: Sequence[np.ndarray]) -> np.ndarray:
        geometries: list[tuple[float, float] | None] = []
        for image in images:
            geometry = None
            if isinstance(extractor, SpectralExtractor):
                with torch.no_grad():
                    found = extractor.read(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None])
                geometry = (float(found.rotation[0]), float(found.scale[0]))
            geometries.append(geometry)
        rows = []
        for first in range(0, len(images), BATCH):
            reads = reader.noise_batch(list(images[first:first + BATCH]), geometries[first:first + BATCH])
            rows += [_bits(mark, read) for read in reads]
        return np.stack(rows).astype(np.uint8)

    return detect


def _bits(mark: Any, read: Any) -> np.ndarray:
    """The bits read, or the key's complement (0 matches) when the image is unreadable."""
    from medsign_forensics.errors import InputError

    if read is not None:
        try:
            return np.asarray(mark.read(read[0], read[1]).bits)
        except InputError:
            pass
    return np.asarray(1 - mark.key)


def both_layers_detector(decoder: Detector, latent: Detector, key: np.ndarray) -> Detector:
    """Per image, the bits of whichever layer matches ``key`` better (the layer a verdict would rest on)."""

    def detect(images: Sequence[np.ndarray]) -> np.ndarray:
        a, b = decoder(images), latent(images)
        better = match_counts(b, key) > match_counts(a, key)
        return np.where(better[:, None], b, a).astype(np.uint8)

    return detect


def latent_methods(*, model: Any, main: Deployment, items: Sequence[Any], extractor: Any, decoder_detector: Detector,
                   decode_all: Any, steps: int, guidance: float, batch: int, seed: int,
                   progress: ProgressFn | None) -> list[Method]:
    """Sample the held-out reports with the latent layer and build both rows."""
    from medsign_forensics.diffusion.conditioning import sample_reports
    from medsign_forensics.watermark.latent import DEFAULT_INVERSION_STEPS
    from medsign_forensics.watermark.latent_reader import LatentReader

    mark = latent_mark(main, seed)
    reader = LatentReader(model, steps=DEFAULT_INVERSION_STEPS)  # as `verify` reads it
    side = model.image_size // model.vae_scale_factor
    shape = (model.latent_channels, side, side)
    latents: list[torch.Tensor] = []
    for index, item in enumerate(items):
        noise = mark.initial_noise(shape, torch.Generator().manual_seed(item.seed))
        result = sample_reports(model, [item.text], seed=item.seed, latents=noise, steps=steps,
                                guidance_scale=guidance, output="latents")
        assert result.latents is not None  # output="latents"
        latents.append(result.latents)
        notify(progress, "sampling with the latent layer", index + 1, len(items))
    x0 = torch.cat(latents)
    plain = decode_all(model, None, x0, batch)
    both = decode_all(model, main.watermarked_vae(model).to(model.device), x0, batch)
    latent = latent_detector(reader, mark)
    source = f"{main.path} (latent layer{'' if main.has_latent else ', evaluation secret'})"
    return [
        Method(name=GS_TITLE, kind=MethodKind.IN_GENERATION, role=Role.LATENT, key=mark.key, images=plain,
               detector=latent, source=source, same_sample=False),
        Method(name=BOTH_TITLE, kind=MethodKind.IN_GENERATION, role=Role.LATENT, key=mark.key, images=both,
               detector=both_layers_detector(decoder_detector, latent_detector(reader, mark, extractor), mark.key),
               source=source, reference=plain, layers=2),
    ]
