"""Phantom datasets: many reports rendered into images, masks and captions, in parallel and resumably.

Layout of a dataset folder::

    dataset.json             settings it was built with (a resumed build must use the same ones)
    images/000000.png        8-bit radiograph
    masks/000000.png         union of the lesion masks (0/255)
    masks/000000.npz         one boolean mask per drawn finding, ``masks`` (K, H, W), in ``drawn`` order
    meta/000000.json         the item's caption record, written last: an item is complete when it exists
    captions.jsonl           every item's record, in order, rewritten at the end of each build

Every item is fixed by the dataset seed and its index alone (which report, which patient), so a resumed or
parallel build gives the same files as one uninterrupted serial build. Files are written under a temporary
name and renamed, and the item's record comes last, so an interrupted item is redone, never half-used.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medsign_forensics import __version__
from medsign_forensics.errors import InputError
from medsign_forensics.fileio import save_png, write_bytes, write_json, write_text
from medsign_forensics.phantom.renderer import check_size, render_report
from medsign_forensics.reports.corpus import Report

FORMAT_VERSION = 1
SUBFOLDERS = ("images", "masks", "meta")


@dataclass(frozen=True)
class DatasetItem:
    """One planned render: which report and which patient."""

    index: int
    report_id: str
    caption: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.index:06d}"


@dataclass(frozen=True)
class BuildSummary:
    """What a build did."""

    out_dir: Path
    total: int
    rendered: int
    skipped: int
    normal: int

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


def item_seed(dataset_seed: int, index: int) -> int:
    """The patient of item ``index``: a 63-bit seed from (dataset seed, index), independent of everything else."""
    words = np.random.SeedSequence([dataset_seed, index]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & (2**63 - 1)


def plan_items(reports: Sequence[Report], *, n: int, seed: int) -> list[DatasetItem]:
    """Items 0..n-1: a seeded permutation of the reports, cycled when n exceeds the corpus, each with its own
    patient. Reports whose text is empty once cleaned cannot be captions and are left out."""
    usable = [report for report in reports if report.text.strip()]
    if not usable:
        raise InputError("the report source holds no report with text; give reports with findings or impression")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(len(usable))
    items = []
    for index in range(n):
        report = usable[int(order[index % len(usable)])]
        items.append(DatasetItem(index, report.report_id, report.text, item_seed(seed, index)))
    return items


def _complete(out_dir: Path, item: DatasetItem) -> bool:
    name = item.name
    return all(
        (out_dir / rel).is_file()
        for rel in (f"meta/{name}.json", f"images/{name}.png", f"masks/{name}.png", f"masks/{name}.npz")
    )


def render_item(out_dir: Path, size: int, item: DatasetItem) -> dict[str, object]:
    """Render one item and write its files; the record (meta) is written last and returned."""
    study, parsed = render_report(item.caption, seed=item.seed, size=size)
    name = item.name
    save_png(out_dir / "images" / f"{name}.png", study.image_u8)
    save_png(out_dir / "masks" / f"{name}.png", study.lesion_mask.astype(np.uint8) * 255)
    stack = np.stack([mask for _, mask in study.masks]) if study.masks else np.zeros((0, size, size), bool)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, masks=stack)
    write_bytes(out_dir / "masks" / f"{name}.npz", buffer.getvalue())
    record = {
        "id": name,
        "report_id": item.report_id,
        "caption": item.caption,
        "findings": [f.to_dict() for f in parsed],
        "drawn": [f.to_dict() for f in study.drawn],
        "seed": item.seed,
        "size": size,
        "image": f"images/{name}.png",
        "mask": f"masks/{name}.png",
        "finding_masks": f"masks/{name}.npz",
    }
    write_json(out_dir / "meta" / f"{name}.json", record)
    return record


def _render_job(job: tuple[str, int, DatasetItem]) -> None:
    """Worker entry point (module level so that spawned processes can import it)."""
    out_dir, size, item = job
    render_item(Path(out_dir), size, item)


def _check_manifest(out_dir: Path, settings: dict[str, object]) -> None:
    path = out_dir / "dataset.json"
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the dataset settings ({error}); remove the folder or choose another --out",
                         path=path) from None
    keys = ("format", "source", "split", "size", "seed")
    different = [k for k in keys if existing.get(k) != settings.get(k)]
    if different:
        told = ", ".join(f"{k}={existing.get(k)!r}" for k in different)
        raise InputError(
            f"this folder holds a dataset built with other settings ({told}); resume it with those settings "
            "or choose another --out",
            path=out_dir,
        )


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files left by a worker that was killed mid-write are never part of the dataset."""
    for sub in SUBFOLDERS:
        for stale in (out_dir / sub).glob(".*.tmp"):
            stale.unlink(missing_ok=True)


def build_dataset(
    reports: Sequence[Report],
    out_dir: str | Path,
    *,
    n: int,
    size: int = 256,
    seed: int = 0,
    workers: int = 1,
    source: str = "",
    split: str = "all",
    progress: Callable[[int, int], None] | None = None,
) -> BuildSummary:
    """Render ``n`` phantoms from ``reports`` into ``out_dir``, skipping items a previous build completed.

    ``progress(done, total)`` is called after every item (including skipped ones, at the start).
    """
    check_size(size)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    items = plan_items(reports, n=n, seed=seed)
    settings = {"format": FORMAT_VERSION, "source": source, "split": split, "size": size, "seed": seed}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_manifest(out_dir, settings)
        for sub in SUBFOLDERS:
            (out_dir / sub).mkdir(exist_ok=True)
        _remove_stale_temporaries(out_dir)
        write_json(out_dir / "dataset.json", {**settings, "n": n, "software": f"medsign-forensics {__version__}"})
    except OSError as error:
        raise InputError(f"cannot write the dataset folder: {error.strerror or error}", path=out_dir) from None

    todo = [item for item in items if not _complete(out_dir, item)]
    skipped = len(items) - len(todo)
    done = skipped
    if progress:
        progress(done, len(items))
    jobs = [(str(out_dir), size, item) for item in todo]
    try:
        with contextlib.ExitStack() as stack:
            finished: Iterator[None]
            if workers == 1 or len(jobs) <= 1:
                finished = map(_render_job, jobs)
            else:
                # "spawn": workers start clean, never inheriting threads or locks of the parent (torch, Rich).
                pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))))
                finished = pool.imap_unordered(_render_job, jobs, chunksize=1)
            for _ in finished:
                done += 1
                if progress:
                    progress(done, len(items))
    except OSError as error:
        raise InputError(f"cannot write the dataset: {error.strerror or error}", path=out_dir) from None
    normal = _write_captions(out_dir, items)
    return BuildSummary(out_dir=out_dir, total=len(items), rendered=len(todo), skipped=skipped, normal=normal)


def _write_captions(out_dir: Path, items: Sequence[DatasetItem]) -> int:
    """Gather the items' records into captions.jsonl (in item order); returns how many items are normal."""
    lines = []
    normal = 0
    for item in items:
        record = json.loads((out_dir / "meta" / f"{item.name}.json").read_text(encoding="utf-8"))
        normal += not record["drawn"]
        lines.append(json.dumps(record, sort_keys=True))
    write_text(out_dir / "captions.jsonl", "\n".join(lines) + "\n")
    return normal


__all__ = ["BuildSummary", "DatasetItem", "build_dataset", "item_seed", "plan_items", "render_item"]
