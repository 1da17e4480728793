"""Training data of mini-cxr: phantoms rendered from real Open-i reports, captioned with the report text.

Each training report gives one phantom per render seed (``renders_per_report``: the same findings on
different anatomy) and several caption variants: the report as written (FINDINGS then IMPRESSION), the
IMPRESSION first (reports often exceed the 77-token limit, and the impression carries the findings), and
only the sentences that mention a finding. A variant never drops a sentence that mentions a finding, so the
caption always describes what was drawn. Normal reports are kept: the model must learn to draw no lesion. With
``data.captions = "findings"`` the one caption is the report's findings prompt instead.

Renders are cached once as uint8 in a memory-mapped file (rendering costs about 0.1 s per study on the
2-core CPU, as much as a training step), filled in chunks so an interrupted build resumes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.diffusion.configs import DataConfig
from medsign_forensics.errors import DatasetError
from medsign_forensics.fileio import write_text
from medsign_forensics.reports.findings import Finding, FindingKind
from medsign_forensics.training.progress import ProgressFn, notify

RENDER_SIZE = 256  # the smallest size the phantom renderer draws
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class StudySource(Protocol):
    """What training needs from a corpus: captions and a renderer per study, addressed by index."""

    def __len__(self) -> int: ...

    def report_id(self, index: int) -> str: ...

    def captions(self, index: int) -> tuple[str, ...]: ...

    def render(self, index: int, *, seed: int, size: int) -> np.ndarray: ...


class MaskedStudySource(StudySource, Protocol):
    """A study source that also gives each render's lesion masks, which grounded training needs."""

    def masks(self, index: int, *, seed: int, size: int, grid: int) -> dict[FindingKind, np.ndarray]: ...


@dataclass(frozen=True)
class _Entry:
    report_id: str
    captions: tuple[str, ...]
    findings: tuple  # tuple[Finding, ...]


class ReportPhantomSource:
    """Reports with their parsed findings; ``render`` draws the phantom of a report's findings."""

    def __init__(self, reports: Sequence[object], *, captions: str = "report") -> None:
        from medsign_forensics.reports import parse_report
        from medsign_forensics.reports.prompt import findings_prompt

        def variants(report: object) -> tuple[str, ...]:
            if captions == "findings":
                return (findings_prompt(report.text),)  # type: ignore[attr-defined]
            return caption_variants(report, parse_report)

        self._entries = [
            _Entry(r.report_id, variants(r), tuple(parse_report(r.text)))  # type: ignore[attr-defined]
            for r in reports
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def report_id(self, index: int) -> str:
        return self._entries[index].report_id

    def captions(self, index: int) -> tuple[str, ...]:
        return self._entries[index].captions

    def render(self, index: int, *, seed: int, size: int) -> np.ndarray:
        """The phantom at ``size``; sizes below the renderer's 256 (tiny test models) are block-averaged."""
        from medsign_forensics.phantom.renderer import render_study

        native = max(size, RENDER_SIZE)
        image = render_study(self._entries[index].findings, seed=seed, size=native).image
        if native == size:
            return image
        if native % size:
            raise DatasetError(f"image size {size} must divide the phantom size {native}")
        return _block_mean(image, native // size)

    def masks(self, index: int, *, seed: int, size: int, grid: int) -> dict[FindingKind, np.ndarray]:
        """The lesions of the phantom :meth:`render` draws at ``size`` with this seed (:func:`kind_masks`)."""
        return kind_masks(self._entries[index].findings, seed=seed, size=size, grid=grid)


def kind_masks(findings: Sequence[Finding], *, seed: int, size: int, grid: int) -> dict[FindingKind, np.ndarray]:
    """The lesions the phantom of ``findings`` has at ``size`` with this seed, per drawn finding kind, on a
    ``grid`` x ``grid`` raster (e.g. the latent's): the fraction of each cell inside the kind's lesions, float32
    in [0, 1]. Kinds whose masks are empty are left out."""
    from medsign_forensics.phantom.renderer import render_masks

    native = max(size, RENDER_SIZE)
    if native % grid:
        raise DatasetError(f"mask grid {grid} must divide the phantom size {native}")
    union: dict[FindingKind, np.ndarray] = {}
    for finding, mask in render_masks(findings, seed=seed, size=native):
        union[finding.kind] = union.get(finding.kind, np.zeros_like(mask)) | mask
    factor = native // grid
    return {kind: _block_mean(mask.astype(np.float32), factor) for kind, mask in union.items() if mask.any()}


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of a square image."""
    size = image.shape[0] // factor
    return image.reshape(size, factor, size, factor).mean(axis=(1, 3)).astype(np.float32)


def caption_variants(report: object, parse: Callable[[str], list]) -> tuple[str, ...]:
    """The distinct captions of one report (see the module docstring); the first is the report as written."""
    from medsign_forensics.reports import clean_text

    findings = clean_text(report.findings)  # type: ignore[attr-defined]
    impression = clean_text(report.impression)  # type: ignore[attr-defined]
    variants = [report.text]  # type: ignore[attr-defined]
    if findings and impression:
        variants.append(_join(impression, findings))
    sentences = [s for s in _SENTENCE_END.split(report.text) if s]  # type: ignore[attr-defined]
    mentioning = [s for s in sentences if parse(s)]
    if mentioning and len(mentioning) < len(sentences):
        variants.append(" ".join(mentioning))
    return tuple(dict.fromkeys(v.strip() for v in variants if v.strip()))


def _join(first: str, second: str) -> str:
    return f"{first}{'' if first[-1] in '.!?' else '.'} {second}"


def load_source(config: DataConfig, *, split: str = "train") -> ReportPhantomSource:
    """The train or test reports of ``config.corpus`` (split by report id hash), capped at ``max_reports``."""
    from medsign_forensics.reports import load_reports, split_reports

    reports = load_reports(config.corpus)
    train, test = split_reports(reports, test_fraction=config.test_fraction, seed=config.split_seed)
    chosen = {"train": train, "test": test}.get(split)
    if chosen is None:
        raise DatasetError(f"unknown split {split!r}; use train or test")
    if config.max_reports is not None:
        chosen = chosen[: config.max_reports]
    if not chosen:
        raise DatasetError(f"the {split} split of {config.corpus!r} holds no reports")
    return ReportPhantomSource(chosen, captions=config.captions)


def render_seed(base_seed: int, index: int, render: int) -> int:
    """The phantom seed of render ``render`` of study ``index``: fixed, distinct, and within 31 bits."""
    return (base_seed * 1_000_003 + index * 97 + render) % (2**31 - 1)


class RenderCache:
    """Renders of every (study, render) pair as uint8 (N, S, S) in ``folder/renders.u8``, plus an index.

    Row ``index * renders_per_report + render`` holds study ``index``, render ``render``. Subclasses store
    other per-render arrays the same way (:class:`~medsign_forensics.diffusion.grounding_data.MaskCache`).
    """

    stem = "renders"
    what = "render cache"
    dtype: type[np.unsignedinteger] = np.uint8

    def __init__(self, folder: Path, *, count: int, size: int) -> None:
        self.folder = folder
        self.count = count
        self.size = size
        self.path = folder / f"{self.stem}.u{np.dtype(self.dtype).itemsize * 8}"
        self.index_path = folder / f"{self.stem}.json"

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, self.size, self.size)

    def settings(self) -> dict[str, object]:
        """What, besides the reports, renders and seed, the cache was made with (checked on reuse)."""
        return {"size": self.size}

    def draw(self, source: StudySource, index: int, seed: int) -> np.ndarray:
        """One row: the phantom of study ``index`` with phantom seed ``seed``, as ``dtype``."""
        return to_uint8(source.render(index, seed=seed, size=self.size))

    def build(
        self,
        source: StudySource,
        *,
        renders_per_report: int,
        seed: int,
        chunk: int = 256,
        progress: ProgressFn | None = None,
        task: str = "rendering phantoms",
    ) -> None:
        """Render what is missing; a finished cache whose ids or settings differ is an error, not reused."""
        ids = [source.report_id(i) for i in range(len(source))]
        meta = {"report_ids": ids, "renders_per_report": renders_per_report, "seed": seed, **self.settings()}
        done = 0
        if self.index_path.is_file():
            stored = json.loads(self.index_path.read_text(encoding="utf-8"))
            if {k: stored.get(k) for k in meta} != meta:
                raise DatasetError(
                    f"the {self.what} was made from other reports or settings; delete it or use a new --out",
                    path=self.index_path,
                )
            done = int(stored["done"])
        mode: Literal["r+", "w+"] = "r+" if self.path.is_file() else "w+"
        rows = np.memmap(self.path, dtype=self.dtype, mode=mode, shape=self.shape)
        notify(progress, task, done, self.count)
        for start in range(done, self.count, chunk):
            stop = min(start + chunk, self.count)
            for row in range(start, stop):
                index, render = divmod(row, renders_per_report)
                rows[row] = self.draw(source, index, render_seed(seed, index, render))
            rows.flush()
            _write_json(self.index_path, {**meta, "done": stop})
            notify(progress, task, stop, self.count)
        if self.count == 0 or done >= self.count:
            _write_json(self.index_path, {**meta, "done": self.count})

    def images(self) -> np.ndarray:
        """The finished cache as a read-only memory map."""
        stored = json.loads(self.index_path.read_text(encoding="utf-8")) if self.index_path.is_file() else {}
        if int(stored.get("done", -1)) != self.count:
            raise DatasetError(f"the {self.what} is incomplete; run the training command again", path=self.path)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)


def _write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def random_crops(images: np.ndarray, batch: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` random rows of ``images``, each cropped at a random offset to ``crop`` x ``crop``."""
    rows = torch.randint(0, len(images), (batch,), generator=generator).tolist()
    size = images.shape[-1]
    offsets = torch.randint(0, size - crop + 1, (batch, 2), generator=generator).tolist()
    patches = [images[r, y : y + crop, x : x + crop] for r, (y, x) in zip(rows, offsets, strict=True)]
    return to_tensor(np.stack(patches))


@torch.no_grad()
def encode_posteriors(
    vae: Any, images: np.ndarray, device: torch.device, *, progress: ProgressFn | None = None, task: str = ""
) -> torch.Tensor:
    """The VAE posterior mean and log-variance of every image, (N, 2 * latent channels, h, w) fp16 on the CPU."""
    chunks = []
    notify(progress, task, 0, len(images))
    for start in range(0, len(images), 64):
        x = to_tensor(images[start : start + 64]).to(device) * 2 - 1
        dist = vae.encode(x).latent_dist
        chunks.append(torch.cat([dist.mean, dist.logvar], dim=1).half().cpu())
        notify(progress, task, min(start + 64, len(images)), len(images))
    return torch.cat(chunks)
