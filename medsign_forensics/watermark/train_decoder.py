"""Stage 2 of MedSign (section 2.2.2): fine-tune the VAE decoder D_w so that every image it decodes carries the
deployment's key, while staying close to the original decoder D_o and away from the pathology.

Two phases:

1. **Cache.** The frozen base model samples every training report once (its own seed, DPM-Solver++, guidance)
   with the cross-attention capture installed; stored per report are x0 (what the decoder receives), the
   original image I_o = D_o(x0) decoded in float32 (float16 on disk), and the report's localization map A_loc
   in the three variants the ablations need (MedSign, without CAS, without AAS; uint8 on disk). Sampling is by
   far the most expensive part on a CPU, so one cache serves every ablation and a resumed or extended run: items
   are keyed by (report id, text, seed) and only missing ones are sampled. See :class:`LatentCache`.
2. **Fine-tuning.** D_w starts as a copy of D_o; only its ``decoder.*`` and ``post_quant_conv.*`` parameters
   train (float32 on every device: bfloat16 rounding alone would cost about 45 dB of PSNR). Per step: a batch of
   cached items, I_w = D_w(x0), an 8-bit requantisation (straight-through, as the image will be stored), ONE
   attack from ``attacks`` (its differentiable form from the shared attack library; "none" included), the frozen,
   whitened extractor in eval mode, and the objective of :mod:`medsign_forensics.watermark.losses`.

   Attacks during fine-tuning: Stable Signature applies none (its extractor is already robust); MedSign does not
   say. We apply one per batch, drawn uniformly from a set that covers the Table 1 conditions, because the
   decoder must learn a pattern the extractor still reads after them (Stable Signature's fine-tuned decoders are
   much weaker than their extractors under crops and JPEG). The set is a config field, so both choices can be
   trained and compared with ``medsign evaluate --ablations``.

Recipe: AdamW, peak lr 5e-4, linear warm-up over ``warmup_steps`` (20, at most a fifth of the run), cosine to
``min_lr`` (1e-6) (Stable Signature); 2 epochs over the training reports by default (the paper); batch 4.
Randomness is a pure function of (seed, step) and (seed, epoch), so a resumed run continues exactly.

Ablations (:class:`Ablation`): ``no-cas`` and ``no-aas`` train on the maps made without CAS or AAS;
``no-tv`` and ``no-pre`` zero a loss weight; ``stable-signature`` uses no map, no L_pre and no L_tv.

**What trains depends on the extractor.** Against a HiDDeN extractor the decoder's own weights train, as above.
Against the spectral extractor (the shipped default) a watermark layer after the frozen decoder trains
(:mod:`medsign_forensics.watermark.head`, the reasons are there): I_w = head(I_o) with I_o from the cache, so a
step needs no decoder pass and a run takes minutes on two CPU cores. Its residual has a fixed per-image RMS
(``psnr``), so each loss term only decides *where* the energy goes; each term is therefore divided by its value
for the untrained layer on the same batch (``normalise_terms``), so that the paper's weights compare relative
changes (our Watson-DCT, BCE and pixel terms are on scales unrelated to the paper's).

At the end, the deployment is measured on held-out reports (``eval_reports``, sampled into the same cache with
held-out seeds): PSNR against D_o and blind bit accuracy after every Table-1 attack's exact form, stored in
``metrics.held_out``; ``medsign generate`` refuses a deployment whose clean accuracy cannot reach attribution.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.config import LossWeights, preset
from medsign_forensics.errors import DatasetError, InputError, ModelError
from medsign_forensics.fileio import atomic_path, write_json, write_text
from medsign_forensics.watermark.deployment import (
    DECODER_PREFIXES,
    EMBEDDED,
    FINETUNED,
    SPECTRAL_HEAD,
    LOG_FILE,
    DeploymentKey,
    decoder_state,
    load_decoder_state,
    read_manifest,
    save_deployment,
)
from medsign_forensics.watermark.head import HeadConfig, WatermarkHead
from medsign_forensics.watermark.hidden import HiddenExtractor, rgb_to_grey
from medsign_forensics.watermark.losses import LossTerms, decoder_objective
from medsign_forensics.watermark.spectral import SpectralExtractor

DEFAULT_REPORTS = "open-i"
TEST_FRACTION = 0.1
SPLIT_SEED = 0
EVAL_SEED_OFFSET = 1_000_003  # item seeds of held-out evaluation differ from those of training
DEFAULT_TRAIN_ATTACKS: tuple[str, ...] = (
    "none",
    "brightness_x2",
    "crop_random_area0.5",
    "jpeg_q50",
    "rotate_25",
    "resize_edge0.7",
)
CHECKPOINT_FILE = "checkpoint.pt"
_RESUMABLE_CHANGES = frozenset({"device", "log_every", "checkpoint_every", "eval_reports"})


class MapVariant(str, Enum):
    """Which localization map an item carries: MedSign's, or one of its ablations'."""

    MEDSIGN = "medsign"
    NO_CAS = "no-cas"
    NO_AAS = "no-aas"

    def options(self) -> Any:
        from medsign_forensics.localization.maps import MapOptions

        return MapOptions(cas=self is not MapVariant.NO_CAS, aas=self is not MapVariant.NO_AAS)


MAP_VARIANTS: tuple[MapVariant, ...] = tuple(MapVariant)


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
            raise InputError(f"need batch >= 1, epochs >= 1 and steps >= 1; got {self.batch}, {self.epochs}, {self.steps}")
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
        data = asdict(self)
        data["ablation"] = self.ablation.value
        data["attacks"] = list(self.attacks)
        data["weights"] = None if self.weights is None else asdict(self.weights)
        data["effective_weights"] = asdict(self.loss_weights)
        data["peak_lr"] = self.peak_lr
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderTrainConfig:
        values = {k: v for k, v in data.items() if k not in ("effective_weights", "peak_lr")}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown decoder training config fields {sorted(unknown)}")
        if values.get("weights") is not None:
            values["weights"] = LossWeights(**values["weights"])
        if "attacks" in values:
            values["attacks"] = tuple(values["attacks"])
        return cls(**values)


# --- reports and seeds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheItem:
    """One sampled image: its report and seed. The cache key."""

    report_id: str
    text: str
    seed: int


def _hash_int(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def item_seed(report_id: str, seed: int) -> int:
    """The sampling seed of a report: fixed by its id and the run seed, independent of which others are chosen."""
    return _hash_int("item-seed", seed, report_id) % (2**31 - 1)


def select_items(reports: Sequence[Any], n: int | None, *, seed: int, seed_offset: int = 0) -> list[CacheItem]:
    """A seeded subset of ``reports`` (ordered by a hash of id and seed, so N=100 is a prefix of N=200)."""
    ordered = sorted(reports, key=lambda r: (_hash_int("order", seed, r.report_id), r.report_id))
    chosen = ordered if n is None else ordered[:n]
    return [CacheItem(r.report_id, r.text, item_seed(r.report_id, seed + seed_offset)) for r in chosen if r.text]


def split_items(source: str, *, held_out: bool, n: int | None, seed: int) -> list[CacheItem]:
    """Training (or held-out) items of a report source: the corpus split of :func:`split_reports`
    (deduplicated, 10 % held out by a hash of the report id), then a seeded subset of ``n``.

    Held-out items get different sampling seeds from training ones (offset :data:`EVAL_SEED_OFFSET`).
    """
    from medsign_forensics.reports import load_reports, split_reports

    train, test = split_reports(load_reports(source), test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    chosen = test if held_out else train
    if not chosen:
        side = "held-out" if held_out else "training"
        raise DatasetError(f"the report source {source!r} has no {side} reports after the 90/10 split; give more reports")
    return select_items(chosen, n, seed=seed, seed_offset=EVAL_SEED_OFFSET if held_out else 0)


# --- the latent / map cache ----------------------------------------------------------------------------------

CACHE_FORMAT = "medsign-decoder-cache"
CACHE_VERSION = 1
CACHE_MANIFEST = "cache.json"
SHARD_SIZE = 32


@dataclass
class CachedData:
    """Cached items in request order: x0 (N, 4, h, w) float32, I_o (N, C, H, W) float16 and the maps
    (variant -> (N, H, W) uint8, A_loc x 255)."""

    items: list[CacheItem]
    latents: torch.Tensor
    images: torch.Tensor
    maps: dict[MapVariant, np.ndarray]

    def __len__(self) -> int:
        return len(self.items)

    def a_loc(self, variant: MapVariant, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """(B, 1, H, W) float32 maps in [0, 1] for the given items."""
        return torch.from_numpy(self.maps[variant][np.asarray(indices)].astype(np.float32) / 255.0)[:, None]


def _sample_with_maps(model: Any, items: Sequence[CacheItem], *, steps: int, guidance_scale: float) -> tuple[torch.Tensor, dict[MapVariant, np.ndarray]]:
    """Sample x0 for a batch of reports and build every map variant from ONE attention capture.

    Each word's token maps are computed once and shared by the variants (they differ only in CAS and AAS),
    exactly as :func:`medsign_forensics.localization.maps.localize_captured` would build each of them.
    """
    from medsign_forensics.diffusion.sampling import SampleOutput, sample
    from medsign_forensics.localization.capture import CrossAttentionCapture
    from medsign_forensics.localization.maps import combine, token_maps, word_map
    from medsign_forensics.localization.words import medical_words, word_tokens

    texts = [item.text for item in items]
    seeds = [item.seed for item in items]
    words = [word_tokens(model.tokenizer, text, medical_words(text))[0] for text in texts]

    def run() -> Any:
        return sample(model, texts, seed=seeds, steps=steps, guidance_scale=guidance_scale, output=SampleOutput.LATENTS)

    captured = None
    if any(words):
        with CrossAttentionCapture(model.unet, conditional_batch=len(texts)) as capture:
            result = run()
        captured = capture.result()
    else:
        result = run()
    size = (result.height, result.width)
    maps: dict[MapVariant, list[np.ndarray]] = {variant: [] for variant in MAP_VARIANTS}
    for index, found in enumerate(words):
        per_token = [token_maps(captured, tokens.positions, size, item=index) for tokens in found]  # type: ignore[arg-type]
        for variant in MAP_VARIANTS:
            word_maps = [word_map(tokens, token, variant.options()) for tokens, token in zip(found, per_token)]
            maps[variant].append(combine(word_maps, size))
    quantised = {v: np.clip(np.rint(np.stack(m) * 255.0), 0, 255).astype(np.uint8) for v, m in maps.items()}
    return result.latents, quantised


class LatentCache:
    """A folder of sampled training (or evaluation) items: ``cache.json`` plus ``shard-NNNNN.npz`` files.

    ``cache.json`` records the settings every item was made with (base model weights SHA-256, sampling steps,
    guidance, image size, map options) and, per shard, its items. A cache made with other settings is refused
    rather than mixed. Shards are written atomically, then the manifest, so an interrupted build keeps every
    finished shard. Each shard holds ``x0`` (float32), ``image`` (I_o, float16), ``a_loc_<variant>`` (uint8),
    ``report_id``, ``seed``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def settings(model: Any, *, steps: int, guidance_scale: float) -> dict[str, Any]:
        return {
            "model_weights_sha256": model.weights_sha256,
            "sample_steps": steps,
            "guidance_scale": float(guidance_scale),
            "image_size": model.image_size,
            "image_channels": model.image_channels,
            "map_variants": {v.value: asdict(v.options()) for v in MAP_VARIANTS},
        }

    def _manifest(self, settings: dict[str, Any]) -> dict[str, Any]:
        path = self.folder / CACHE_MANIFEST
        if not path.is_file():
            return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "settings": settings, "shards": []}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"the cache manifest cannot be read ({error}); delete the cache folder", path=path) from None
        if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
            raise DatasetError("this is not a decoder cache of this software version; use another --cache", path=path)
        if manifest.get("settings") != json.loads(json.dumps(settings)):
            raise DatasetError(
                "this cache was made with another base model or other sampling settings; use another --cache folder",
                path=path,
            )
        return manifest

    def build(
        self,
        model: Any,
        items: Sequence[CacheItem],
        *,
        reference_vae: torch.nn.Module,
        steps: int,
        guidance_scale: float,
        batch: int,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> CachedData:
        """Sample every item not yet cached, then return all requested items (in request order).

        ``reference_vae`` (D_o, float32) decodes I_o, so that I_o is exactly what training compares against.
        """
        from medsign_forensics.diffusion.sampling import decode

        settings = self.settings(model, steps=steps, guidance_scale=guidance_scale)
        manifest = self._manifest(settings)
        known = {_item_key(CacheItem(**entry)) for shard in manifest["shards"] for entry in shard["items"]}
        missing = [item for item in dict.fromkeys(items) if _item_key(item) not in known]
        done = len(items) - len(missing)
        if on_progress is not None:
            on_progress(done, len(items))
        pending: list[tuple[CacheItem, np.ndarray, np.ndarray, dict[MapVariant, np.ndarray]]] = []
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            latents, maps = _sample_with_maps(model, chunk, steps=steps, guidance_scale=guidance_scale)
            with torch.no_grad():
                images = decode(model, latents, vae=reference_vae).cpu()
            for i, item in enumerate(chunk):
                pending.append((item, latents[i].numpy(), images[i].numpy(), {v: maps[v][i] for v in MAP_VARIANTS}))
            if len(pending) >= SHARD_SIZE or start + batch >= len(missing):
                self._write_shard(manifest, pending)
                pending = []
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, len(items))
        return self.load(items, settings=settings)

    def _write_shard(self, manifest: dict[str, Any], rows: list[tuple[CacheItem, np.ndarray, np.ndarray, dict[MapVariant, np.ndarray]]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{len(manifest['shards']):05d}.npz"
        arrays = {
            "x0": np.stack([row[1] for row in rows]).astype(np.float32),
            "image": np.stack([row[2] for row in rows]).astype(np.float16),
            "report_id": np.array([row[0].report_id for row in rows]),
            "seed": np.array([row[0].seed for row in rows], dtype=np.int64),
        }
        for variant in MAP_VARIANTS:
            arrays[f"a_loc_{variant.value}"] = np.stack([row[3][variant] for row in rows])
        with atomic_path(self.folder / name) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        manifest["shards"].append({"file": name, "items": [asdict(row[0]) for row in rows]})
        write_json(self.folder / CACHE_MANIFEST, manifest)

    def load(self, items: Sequence[CacheItem], *, settings: dict[str, Any]) -> CachedData:
        """The requested items from their shards; DatasetError for an item that is not cached."""
        manifest = self._manifest(settings)
        where: dict[tuple[str, str, int], tuple[str, int]] = {}
        for shard in manifest["shards"]:
            for position, entry in enumerate(shard["items"]):
                where[_item_key(CacheItem(**entry))] = (shard["file"], position)
        absent = [item.report_id for item in items if _item_key(item) not in where]
        if absent:
            raise DatasetError(f"{len(absent)} item(s) are not in the cache (e.g. {absent[0]}); build it first", path=self.folder)
        opened: dict[str, Any] = {}
        rows: list[tuple[np.ndarray, np.ndarray, dict[MapVariant, np.ndarray]]] = []
        for item in items:
            file, position = where[_item_key(item)]
            if file not in opened:
                try:
                    with np.load(self.folder / file, allow_pickle=False) as data:
                        opened[file] = {key: data[key] for key in data.files}
                except (OSError, ValueError, KeyError) as error:
                    raise DatasetError(f"a cache shard cannot be read ({error}); delete the cache folder", path=self.folder / file) from None
            data = opened[file]
            rows.append((data["x0"][position], data["image"][position], {v: data[f"a_loc_{v.value}"][position] for v in MAP_VARIANTS}))
        return CachedData(
            items=list(items),
            latents=torch.from_numpy(np.stack([row[0] for row in rows])),
            images=torch.from_numpy(np.stack([row[1] for row in rows])),
            maps={v: np.stack([row[2][v] for row in rows]) for v in MAP_VARIANTS},
        )


def cached_originals(folder: str | Path, *, held_out: bool) -> list[tuple[CacheItem, np.ndarray]]:
    """The original decoder's images I_o ((C, H, W) float32 in [0, 1]) stored in a cache folder, with their
    items, for the reports of one side of the corpus split (:func:`split_items`, Open-i): benchmarks and the null
    calibration must know which images a held-out measurement may use."""
    from medsign_forensics.reports import load_reports, split_reports

    folder = Path(folder)
    split = {r.report_id for r in split_reports(load_reports(DEFAULT_REPORTS), test_fraction=TEST_FRACTION,
                                                seed=SPLIT_SEED)[1]}
    try:
        manifest = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"not a readable decoder cache ({error})", path=folder) from None
    out = []
    for shard in manifest.get("shards", []):
        with np.load(folder / shard["file"], allow_pickle=False) as data:
            images = data["image"]
        for entry, image in zip(shard["items"], images):
            if (entry["report_id"] in split) == held_out:
                out.append((CacheItem(**entry), np.clip(image.astype(np.float32), 0.0, 1.0)))
    return out


def _item_key(item: CacheItem) -> tuple[str, str, int]:
    return (item.report_id, item.text, int(item.seed))


# --- fine-tuning ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """One logging window (means over its steps). Loss terms are unweighted; ``total`` is weighted."""

    step: int
    epoch: float
    lr: float
    loss: dict[str, float]
    bit_accuracy: float
    psnr: float
    seconds_per_step: float
    attacks: dict[str, float]  # bit accuracy per attack seen in the window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DecoderTrainResult:
    out: Path
    steps: int
    items: int
    last: StepRecord | None
    decoder_sha256: str
    cache_seconds: float
    train_seconds: float
    seconds_per_step: float | None
    layer: str = FINETUNED
    held_out: dict[str, Any] | None = None


def total_steps(config: DecoderTrainConfig, n_items: int) -> int:
    return config.steps if config.steps is not None else config.epochs * math.ceil(n_items / config.batch)


def lr_factor(step: int, config: DecoderTrainConfig, total: int) -> float:
    """Linear warm-up (at most a fifth of the run), then cosine from the peak down to ``min_lr``."""
    warmup = min(config.warmup_steps, total // 5)
    if step < warmup:
        return (step + 1) / warmup
    floor = min(1.0, config.min_lr / config.peak_lr)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


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
            self.head = WatermarkHead(spectral=extractor.config, key=key.key, config=HeadConfig(psnr=config.psnr))
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config, self.total))
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
                start_logits = torch.cat([self.extractor(a.differentiable(self.store.differentiable(start),
                                                                          np.random.default_rng([self.config.seed, 11, step])))
                                          for a in self.attacks])
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
        terms, logits, watermarked, original, attack = self.forward(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        accuracy = float(((logits.detach() > 0).float() == self.key).float().mean())
        return terms.values(), accuracy, _psnr(watermarked.detach(), original), attack

    def trainable_state(self) -> dict[str, torch.Tensor]:
        if self.head is not None:
            return {name: t.detach().cpu().clone() for name, t in self.head.state_dict().items()}
        assert self.vae_w is not None
        return decoder_state(self.vae_w)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, context: dict[str, Any]) -> None:
        state = {
            "config": self.config.to_dict(),
            "context": context,
            "step": self.step,
            "layer": self.layer_kind,
            "decoder": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: Path, context: dict[str, Any]) -> None:
        if not path.is_file():
            raise InputError("--resume was given but there is no checkpoint.pt; start without --resume", path=path)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            saved = DecoderTrainConfig.from_dict(state["config"])
        except Exception as error:  # torch and our own parsing raise many types for a damaged file
            raise ModelError(f"the checkpoint cannot be read ({error}); start a fresh run", path=path) from None
        changed = {f.name for f in fields(DecoderTrainConfig) if getattr(saved, f.name) != getattr(self.config, f.name)}
        if changed - _RESUMABLE_CHANGES or state.get("context") != context or \
                state.get("layer", FINETUNED) != self.layer_kind:
            what = ", ".join(sorted(changed - _RESUMABLE_CHANGES)) or "base model, extractor, key or reports"
            raise InputError(
                f"the checkpoint was trained with different settings ({what}); resume with the same ones or use a new --out",
                path=path,
            )
        if self.head is not None:
            self.head.load_state_dict(state["decoder"], strict=True)
        else:
            assert self.vae_w is not None
            load_decoder_state(self.vae_w, state["decoder"], path=path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text(path, "".join(line + "\n" for line in kept))


def _base_model_info(model: Any) -> dict[str, str]:
    return {
        "name": model.name,
        "path": EMBEDDED if model.is_default else str(model.path),
        "weights_sha256": model.weights_sha256,
    }


def train_decoder(
    config: DecoderTrainConfig,
    *,
    model: Any,
    extractor: str | Path,
    key: DeploymentKey,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    items: Sequence[CacheItem] | None = None,
    eval_items: Sequence[CacheItem] | None = None,
    resume: bool = False,
    name: str | None = None,
    on_cache: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_log: Callable[[StepRecord], None] | None = None,
) -> DecoderTrainResult:
    """Build (or reuse) the cache, fine-tune D_w, and write the deployment folder ``out_dir``.

    ``model`` is a loaded DiffusionModel; ``extractor`` the folder of a whitened extractor (loaded verified).
    ``items`` overrides the reports of ``config.reports`` (tests, custom lists); ``eval_items`` the held-out
    reports measured at the end (by default ``config.eval_reports`` held-out reports of ``config.reports``,
    none when ``items`` is given). ``cache_dir`` defaults to ``out_dir/cache``; give several runs (ablations)
    the same one so that sampling happens once.
    """
    from medsign_forensics.watermark.extractor_io import extractor_manifest, load_extractor

    out = Path(out_dir)
    checkpoint = out / CHECKPOINT_FILE
    if not resume and checkpoint.exists():
        raise InputError("this folder already holds a decoder training run; pass --resume or choose a new --out", path=out)
    out.mkdir(parents=True, exist_ok=True)
    extractor_module = load_extractor(Path(extractor), device=config.device)
    from medsign_forensics.config import DEFAULT_EXTRACTOR_DIR

    extractor_path = Path(extractor).resolve()
    extractor_info = {"path": EMBEDDED if extractor_path == DEFAULT_EXTRACTOR_DIR.resolve() else str(extractor_path),
                      "sha256": str(extractor_manifest(Path(extractor))["sha256"])}
    if eval_items is None and items is None and config.eval_reports:
        eval_items = split_items(config.reports, held_out=True, n=config.eval_reports, seed=config.seed)
    if items is None:
        items = split_items(config.reports, held_out=False, n=config.n_reports, seed=config.seed)
    cache = LatentCache(Path(cache_dir) if cache_dir is not None else out / "cache")
    started = time.perf_counter()
    reference = copy.deepcopy(model.vae).to(model.device).float().eval()
    data = cache.build(
        model, items, reference_vae=reference, steps=config.sample_steps, guidance_scale=config.guidance_scale,
        batch=config.sample_batch, on_progress=on_cache,
    )
    cache_seconds = time.perf_counter() - started
    eval_data = None if not eval_items else cache.build(
        model, eval_items, reference_vae=reference, steps=config.sample_steps, guidance_scale=config.guidance_scale,
        batch=config.sample_batch, on_progress=on_cache,
    )
    del reference

    trainer = DecoderTrainer(config, model=model, extractor=extractor_module, key=key, data=data)
    context = {
        "model_weights_sha256": model.weights_sha256,
        "extractor_sha256": extractor_info["sha256"],
        "key_hex": key.key_hex,
        "items": hashlib.sha256(json.dumps([asdict(i) for i in items]).encode()).hexdigest(),
    }
    if resume:
        trainer.load_checkpoint(checkpoint, context)
    log_path = out / LOG_FILE
    _trim_log(log_path, trainer.step)

    window: dict[str, list[float]] = defaultdict(list)
    per_attack: dict[str, list[float]] = defaultdict(list)
    last: StepRecord | None = None
    train_started = time.perf_counter()
    window_started = train_started
    steps_run = 0
    if on_step is not None:
        on_step(trainer.step, trainer.total)
    while trainer.step < trainer.total:
        values, accuracy, psnr, attack = trainer.train_step()
        steps_run += 1
        for term, value in values.items():
            window[term].append(value)
        window["acc"].append(accuracy)
        window["psnr"].append(psnr)
        per_attack[attack].append(accuracy)
        if on_step is not None:
            on_step(trainer.step, trainer.total)
        if trainer.step % config.log_every == 0 or trainer.step == trainer.total:
            now = time.perf_counter()
            last = StepRecord(
                step=trainer.step,
                epoch=trainer.step * config.batch / len(data),
                lr=float(trainer.scheduler.get_last_lr()[0]),
                loss={term: float(np.mean(window[term])) for term in ("img", "msg", "tv", "pre", "total")},
                bit_accuracy=float(np.mean(window["acc"])),
                psnr=float(np.mean(window["psnr"])),
                seconds_per_step=(now - window_started) / len(window["acc"]),
                attacks={name: float(np.mean(v)) for name, v in sorted(per_attack.items())},
            )
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(last.to_dict(), sort_keys=True) + "\n")
            if on_log is not None:
                on_log(last)
            window.clear()
            per_attack.clear()
            window_started = time.perf_counter()
        if trainer.step % config.checkpoint_every == 0 or trainer.step == trainer.total:
            trainer.save_checkpoint(checkpoint, context)
    train_seconds = time.perf_counter() - train_started
    seconds_per_step = train_seconds / steps_run if steps_run else None

    held_out = None if eval_data is None else measure_held_out(trainer, eval_data, seed=config.seed)

    metrics: dict[str, Any] = {
        "steps": trainer.step,
        "items": len(data),
        "cache_seconds": round(cache_seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "seconds_per_step": None if seconds_per_step is None else round(seconds_per_step, 4),
        "last_window": None if last is None else last.to_dict(),
        "held_out": held_out,
    }
    save_deployment(
        out,
        vae=trainer.vae_w,
        head=trainer.head,
        key=key,
        base_model=_base_model_info(model),
        extractor=extractor_info,
        config=config.to_dict(),
        seed=config.seed,
        device=str(trainer.device),
        wall_time_s=cache_seconds + train_seconds,
        metrics=metrics,
        name=name,
    )
    return DecoderTrainResult(
        out=out,
        steps=trainer.step,
        items=len(data),
        last=last,
        decoder_sha256=str(read_manifest(out)["decoder"]["sha256"]),
        cache_seconds=cache_seconds,
        train_seconds=train_seconds,
        seconds_per_step=seconds_per_step,
        layer=trainer.layer_kind,
        held_out=held_out,
    )


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


def with_overrides(config: DecoderTrainConfig, **changes: Any) -> DecoderTrainConfig:
    """A copy of ``config`` with fields replaced (None values ignored): the CLI's option handling."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


__all__ = [
    "Ablation",
    "CacheItem",
    "CachedData",
    "DecoderTrainConfig",
    "DecoderTrainResult",
    "DecoderTrainer",
    "LatentCache",
    "MapVariant",
    "StepRecord",
    "batch_indices",
    "cached_originals",
    "item_seed",
    "measure_held_out",
    "lr_factor",
    "select_items",
    "split_items",
    "total_steps",
    "train_decoder",
    "with_overrides",
]
