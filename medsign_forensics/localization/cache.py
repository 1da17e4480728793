"""The latent/map cache: x0, I_o and A_loc of sampled reports, made once and shared by training and evaluation.

Sampling is by far the most expensive part of decoder fine-tuning on a CPU, so every item the frozen base
model samples is stored: x0 (what the decoder receives), the original image I_o = D_o(x0) decoded in float32
(float16 on disk) and the report's localization map A_loc in the three variants the ablations need (MedSign,
without CAS, without AAS; uint8 on disk), all from ONE denoising run with the cross-attention capture installed
(:func:`~medsign_forensics.localization.generation.generate_with_maps`). Items are keyed by (report id, text,
seed) and only missing ones are sampled, so one cache serves every ablation, a resumed or extended run and the
held-out evaluation.

Which reports: the corpus split of :func:`medsign_forensics.reports.split_reports` (deduplicated, 10 % held
out by a hash of the report id), then a seeded subset whose sampling seeds are fixed by report id and run seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.errors import DatasetError
from medsign_forensics.fileio import atomic_path, write_json
from medsign_forensics.localization.maps import MapOptions
from medsign_forensics.training.progress import ProgressFn, notify

DEFAULT_REPORTS = "open-i"
TEST_FRACTION = 0.1
SPLIT_SEED = 0
EVAL_SEED_OFFSET = 1_000_003  # item seeds of held-out evaluation differ from those of training

CACHE_FORMAT = "medsign-decoder-cache"
CACHE_VERSION = 1
CACHE_MANIFEST = "cache.json"
SHARD_SIZE = 32


class MapVariant(str, Enum):
    """Which localization map an item carries: MedSign's, or one of its ablations'."""

    MEDSIGN = "medsign"
    NO_CAS = "no-cas"
    NO_AAS = "no-aas"

    def options(self) -> MapOptions:
        return MapOptions(cas=self is not MapVariant.NO_CAS, aas=self is not MapVariant.NO_AAS)


MAP_VARIANTS: tuple[MapVariant, ...] = tuple(MapVariant)


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
        raise DatasetError(
            f"the report source {source!r} has no {side} reports after the 90/10 split; give more reports"
        )
    return select_items(chosen, n, seed=seed, seed_offset=EVAL_SEED_OFFSET if held_out else 0)


# --- the cache -----------------------------------------------------------------------------------------------


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


_Row = tuple[CacheItem, np.ndarray, np.ndarray, dict[MapVariant, np.ndarray]]


def _sample_batch(
    model: Any, items: Sequence[CacheItem], *, steps: int, guidance_scale: float
) -> tuple[torch.Tensor, dict[MapVariant, np.ndarray]]:
    """x0 for a batch of reports and every map variant (uint8, A_loc x 255) from ONE attention capture."""
    from medsign_forensics.diffusion.sampling import SampleOutput
    from medsign_forensics.localization.generation import generate_with_maps

    generated = generate_with_maps(
        model,
        [item.text for item in items],
        seed=[item.seed for item in items],
        steps=steps,
        guidance_scale=guidance_scale,
        options=[variant.options() for variant in MAP_VARIANTS],
        output=SampleOutput.LATENTS,
    )
    maps = {
        variant: np.stack([found.a_loc for found in generated.variants[variant.options()]])
        for variant in MAP_VARIANTS
    }
    quantised = {v: to_uint8(m) for v, m in maps.items()}
    assert generated.sample.latents is not None
    return generated.sample.latents, quantised


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
            raise DatasetError(
                f"the cache manifest cannot be read ({error}); delete the cache folder", path=path
            ) from None
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
        progress: ProgressFn | None = None,
        task: str = "sampling x0 + A_loc",
    ) -> CachedData:
        """Sample every item not yet cached, then return all requested items (in request order).

        ``reference_vae`` (D_o, float32) decodes I_o, so that I_o is exactly what training compares against.
        ``progress`` receives events of ``task`` counting the requested items that are cached.
        """
        from medsign_forensics.diffusion.sampling import decode

        settings = self.settings(model, steps=steps, guidance_scale=guidance_scale)
        manifest = self._manifest(settings)
        known = {_item_key(CacheItem(**entry)) for shard in manifest["shards"] for entry in shard["items"]}
        missing = [item for item in dict.fromkeys(items) if _item_key(item) not in known]
        done = len(items) - len(missing)
        notify(progress, task, done, len(items))
        pending: list[_Row] = []
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            latents, maps = _sample_batch(model, chunk, steps=steps, guidance_scale=guidance_scale)
            with torch.no_grad():
                images = decode(model, latents, vae=reference_vae).cpu()
            for i, item in enumerate(chunk):
                pending.append((item, latents[i].numpy(), images[i].numpy(), {v: maps[v][i] for v in MAP_VARIANTS}))
            if len(pending) >= SHARD_SIZE or start + batch >= len(missing):
                self._write_shard(manifest, pending)
                pending = []
            done += len(chunk)
            notify(progress, task, done, len(items))
        return self.load(items, settings=settings)

    def _write_shard(self, manifest: dict[str, Any], rows: list[_Row]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{len(manifest['shards']):05d}.npz"
        arrays: dict[str, np.ndarray] = {
            "x0": np.stack([row[1] for row in rows]).astype(np.float32),
            "image": np.stack([row[2] for row in rows]).astype(np.float16),
            "report_id": np.array([row[0].report_id for row in rows]),
            "seed": np.array([row[0].seed for row in rows], dtype=np.int64),
        }
        for variant in MAP_VARIANTS:
            arrays[f"a_loc_{variant.value}"] = np.stack([row[3][variant] for row in rows])
        with atomic_path(self.folder / name) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays might name allow_pickle
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
            raise DatasetError(
                f"{len(absent)} item(s) are not in the cache (e.g. {absent[0]}); build it first", path=self.folder
            )
        opened: dict[str, Any] = {}
        rows: list[tuple[np.ndarray, np.ndarray, dict[MapVariant, np.ndarray]]] = []
        for item in items:
            file, position = where[_item_key(item)]
            if file not in opened:
                try:
                    with np.load(self.folder / file, allow_pickle=False) as data:
                        opened[file] = {key: data[key] for key in data.files}
                except (OSError, ValueError, KeyError) as error:
                    raise DatasetError(
                        f"a cache shard cannot be read ({error}); delete the cache folder", path=self.folder / file
                    ) from None
            data = opened[file]
            maps = {v: data[f"a_loc_{v.value}"][position] for v in MAP_VARIANTS}
            rows.append((data["x0"][position], data["image"][position], maps))
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
