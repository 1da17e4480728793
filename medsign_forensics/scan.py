"""Verify many files, a folder tree or a whole PACS, in parallel, into JSONL and CSV reports.

* Every regular file under the folder is a candidate (formats are judged by content, not name); a file that
  cannot be analysed becomes an ``error`` verdict with its one-line message and the scan goes on.
* Workers are processes forked from a clean fork server (nothing of the parent's torch state is inherited),
  each building its own :class:`~medsign_forensics.verify.Verifier` once: the extractor is loaded once per
  worker, not per file.
  At most ``2 x workers`` files are in flight. If a worker process dies (a decoder crash, the kernel's
  out-of-memory killer), the pool is restarted and the files that were in flight are retried one at a time; a
  file whose worker dies while it is the only one in flight is recorded as an error.
* ``workers=1`` runs in the calling process (no start-up cost; what tests and small folders want); more
  workers than files are never started. Every worker, the calling process included, runs torch on ONE
  thread: one image is too small to share between threads, and on a busy machine two spinning threads per
  process made a scan seven times slower (benchmarks/results/scan_speed.md).
* The JSONL report gets one line per file as soon as its verdict is known (flushed), with the file's size and
  modification time; ``resume=True`` reads it back and skips files whose size and time are unchanged (PACS
  instances: whose instance ID was already recorded). A damaged last line (a crash mid-write) is ignored.
* The CSV report is written at the end, atomically, from all records of this and earlier (resumed) runs.
* Where the files are verified is the *engine*'s business: by default the local one above (``workers``); pass
  ``engine=DaskEngine(...)`` (:mod:`medsign_forensics.cluster`, the optional ``cluster`` extra) to verify them on
  a Dask cluster. Either engine is only a source of records: listing, resuming, the JSONL and CSV reports and
  the summary are this module's, the same for both.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from medsign_forensics.errors import InputError, MedsignError
from medsign_forensics.pacs import InstanceRef, PacsClient, PacsConfig
from medsign_forensics.reading import Scaling
from medsign_forensics.scan_reports import check_writable, ends_with_newline, read_jsonl, write_csv
from medsign_forensics.verify import Verdict, VerdictKind, Verifier


@dataclass(frozen=True)
class VerifierSettings:
    """What a worker needs to build its Verifier (paths, not open objects, so that it pickles)."""

    registry: Path | None = None
    extractor: Path | None = None
    policy: str | None = None
    trust: tuple[Path, ...] = ()
    scaling: Scaling = Scaling.AUTO
    layers: tuple[str, ...] = ("decoder",)
    model: Path | None = None
    inversion_steps: int | None = None

    def open(self) -> Verifier:
        return Verifier.open(registry=self.registry, extractor=self.extractor, policy=self.policy, trust=self.trust,
                             scaling=self.scaling, layers=self.layers, model=self.model,
                             inversion_steps=self.inversion_steps)


@dataclass(frozen=True)
class Task:
    """One thing to verify: a file (with its size and time, for resuming) or a PACS instance."""

    key: str  # what identifies it in the JSONL report
    path: Path | None = None
    size: int | None = None
    mtime_ns: int | None = None
    instance: InstanceRef | None = None


class Engine(Protocol):
    """Where the files of a scan are verified (the local worker processes, or a Dask cluster).

    ``results`` verifies ``tasks`` and yields one record (:func:`_verify_task`'s dictionary) per task, in any
    order, as soon as each is ready; it records a file that cannot be analysed, and raises a
    :class:`MedsignError` only when the scan cannot go on (the records already yielded are kept).
    """

    def results(self, tasks: list[Task], *, settings: VerifierSettings,
                pacs: PacsConfig | None) -> Iterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class LocalEngine:
    """Worker processes on this machine (``workers=1``: in the calling process); see the module docstring."""

    workers: int = 1

    def results(self, tasks: list[Task], *, settings: VerifierSettings,
                pacs: PacsConfig | None) -> Iterator[dict[str, Any]]:
        return _results(tasks, settings=settings, pacs=pacs, workers=self.workers)


@dataclass
class ScanSummary:
    """Counts per verdict over the whole report (earlier resumed records included)."""

    source: str
    counts: Counter = field(default_factory=Counter)
    scanned: int = 0  # verified in this run
    resumed: int = 0  # taken from an earlier run's report
    seconds: float = 0.0
    alarms: list[dict[str, Any]] = field(default_factory=list)  # records with an alarm verdict
    errors: list[dict[str, Any]] = field(default_factory=list)  # records with an error verdict
    jsonl: Path | None = None
    csv: Path | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        """Files verified per second in this run."""
        return self.scanned / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "total": self.total,
            "counts": {kind.value: self.counts.get(kind.value, 0) for kind in VerdictKind},
            "scanned": self.scanned,
            "resumed": self.resumed,
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.rate, 2),
            "alarms": [{"file": r["file"], "verdict": r["verdict"]} for r in self.alarms],
            "errors": [{"file": r["file"], "error": r["error"]} for r in self.errors],
            "jsonl": None if self.jsonl is None else str(self.jsonl),
            "csv": None if self.csv is None else str(self.csv),
        }


# -- listing ------------------------------------------------------------------------------------------------


def list_files(root: str | Path, *, exclude: Iterable[Path] = ()) -> list[Path]:
    """Every regular file under ``root`` (recursively, symbolic links to folders not followed), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError("no such file or folder to scan", path=root)
    skip = {_resolved(path) for path in exclude}
    found = []
    for folder, folders, files in os.walk(root, onerror=None, followlinks=False):
        folders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if _resolved(path) not in skip and (path.is_file() or path.is_symlink()):
                found.append(path)
    return found


def file_tasks(paths: Iterable[Path]) -> list[Task]:
    tasks = []
    for path in paths:
        try:
            stat = path.stat()
            tasks.append(Task(key=str(path), path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
        except OSError:  # a dangling link or a file that vanished: recorded as an error when verified
            tasks.append(Task(key=str(path), path=path))
    return tasks


# -- running ------------------------------------------------------------------------------------------------


def scan_folder(root: str | Path, *, settings: VerifierSettings, workers: int = 1, jsonl: Path | None = None,
                csv_path: Path | None = None, resume: bool = False,
                on_total: Callable[[int], None] | None = None,
                on_verdict: Callable[[dict[str, Any]], None] | None = None,
                engine: Engine | None = None) -> ScanSummary:
    """Verify every file under ``root``; see the module docstring. ``engine`` (default: the local one with
    ``workers``) chooses where the files are verified."""
    root = Path(root)
    outputs = [path for path in (jsonl, csv_path) if path is not None]
    tasks = file_tasks(list_files(root, exclude=outputs))
    return _scan(str(root), tasks, settings=settings, pacs=None, workers=workers, jsonl=jsonl, csv_path=csv_path,
                 resume=resume, on_total=on_total, on_verdict=on_verdict, engine=engine)


def scan_pacs(config: PacsConfig, *, settings: VerifierSettings, workers: int = 1, jsonl: Path | None = None,
              csv_path: Path | None = None, resume: bool = False,
              on_total: Callable[[int], None] | None = None,
              on_verdict: Callable[[dict[str, Any]], None] | None = None,
              engine: Engine | None = None) -> ScanSummary:
    """Verify every instance a PACS holds (listed here, then fetched and verified by the workers)."""
    client = PacsClient(config)
    tasks = [Task(key=client.instance_label(ref), instance=ref) for ref in client.listed()]
    return _scan(config.url, tasks, settings=settings, pacs=config, workers=workers, jsonl=jsonl,
                 csv_path=csv_path, resume=resume, on_total=on_total, on_verdict=on_verdict, engine=engine)


def _scan(source: str, tasks: list[Task], *, settings: VerifierSettings, pacs: PacsConfig | None, workers: int,
          jsonl: Path | None, csv_path: Path | None, resume: bool,
          on_total: Callable[[int], None] | None,
          on_verdict: Callable[[dict[str, Any]], None] | None, engine: Engine | None) -> ScanSummary:
    if workers < 1:
        raise InputError(f"--workers must be at least 1; got {workers}")
    if engine is None:
        engine = LocalEngine(workers)
    elif workers != 1:
        raise InputError(f"--workers {workers} is for the local engine; give the engine its own workers instead")
    if resume and jsonl is None:
        raise InputError("--resume needs the --jsonl report of the earlier run")
    for output in (jsonl, csv_path):  # before any work: a scan must not end in an unwritable report
        if output is not None:
            check_writable(output)
    if jsonl is not None and jsonl.exists() and not resume:
        raise InputError("this JSONL report already exists; pass --resume to continue it, or choose another file",
                         path=jsonl)
    earlier = read_jsonl(jsonl) if resume and jsonl is not None and jsonl.exists() else {}
    todo = [task for task in tasks if not _already_done(task, earlier.get(task.key))]
    todo_keys = {task.key for task in todo}
    kept = {task.key: earlier[task.key] for task in tasks if task.key in earlier and task.key not in todo_keys}
    summary = ScanSummary(source=source, jsonl=jsonl, csv=csv_path, resumed=len(kept))
    for record in kept.values():
        _count(summary, record)
    if on_total is not None:
        on_total(len(todo))
    records = dict(kept)
    start = time.perf_counter()
    # surrogateescape: a file name that is not valid UTF-8 is written back as its original bytes (lossless)
    sink = open(jsonl, "a", encoding="utf-8", errors="surrogateescape") if jsonl is not None else None  # noqa: SIM115
    results: Iterator[dict[str, Any]] = iter(())
    try:
        if jsonl is not None and jsonl.exists() and jsonl.stat().st_size and not ends_with_newline(jsonl):
            sink.write("\n")  # type: ignore[union-attr]  # seal a damaged last line from a crash
        if todo:
            results = engine.results(todo, settings=settings, pacs=pacs)
        for record in results:
            records[record["file"]] = record
            summary.scanned += 1
            _count(summary, record)
            if sink is not None:
                sink.write(json.dumps(record, sort_keys=True) + "\n")
                sink.flush()
            if on_verdict is not None:
                on_verdict(record)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # a generator engine stops its workers now, even when this loop was left early
        if sink is not None:
            sink.close()
        summary.seconds = time.perf_counter() - start
    if csv_path is not None:
        write_csv(csv_path, records.values())
    return summary


def _results(tasks: list[Task], *, settings: VerifierSettings, pacs: PacsConfig | None,
             workers: int) -> Iterator[dict[str, Any]]:
    """Verify ``tasks``, yielding each record as soon as it is ready (in completion order)."""
    if not tasks:
        return
    workers = min(workers, len(tasks))  # no idle processes for a handful of files
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        _init_worker(settings, pacs, threads=1)
        try:
            for task in tasks:
                yield _verify_task(task)
        finally:
            _close_worker()
            torch.set_num_threads(threads)
        return
    pending = list(reversed(tasks))
    suspects: list[Task] = []  # in flight when a worker died: retried one at a time to find the culprit
    while pending or suspects:
        with _pool(settings, pacs, workers) as pool:
            in_flight: dict[Future, Task] = {}
            isolating = False
            try:
                while suspects:
                    isolating = True
                    record = pool.submit(_verify_task, suspects[-1]).result()
                    suspects.pop()
                    yield record
                isolating = False
                while pending or in_flight:
                    while pending and len(in_flight) < 2 * workers:
                        task = pending.pop()
                        in_flight[pool.submit(_verify_task, task)] = task
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        record = future.result()  # BrokenProcessPool when a worker died
                        del in_flight[future]
                        yield record
            except BrokenProcessPool:
                if isolating:  # it died on this file alone: the file is the cause
                    yield _crash_record(suspects.pop())
                for future, task in in_flight.items():
                    if future.done() and future.exception() is None:
                        yield future.result()
                    else:
                        suspects.append(task)


def _pool(settings: VerifierSettings, pacs: PacsConfig | None, workers: int) -> ProcessPoolExecutor:
    # forkserver: one clean server process imports torch and the verifier once (nothing has run in it, so
    # forking it is safe), and every worker is a cheap fork of it; the server is reused by later pools.
    context = get_context("forkserver")
    context.set_forkserver_preload(["medsign_forensics.scan", "medsign_forensics.watermark.extractor_io",
                                    "medsign_forensics.watermark.stats", "medsign_forensics.dicom.reader"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(settings, pacs, 1))


# -- worker side --------------------------------------------------------------------------------------------

_VERIFIER: Verifier | None = None
_CLIENT: PacsClient | None = None


def _init_worker(settings: VerifierSettings, pacs: PacsConfig | None, threads: int | None) -> None:
    """Build this process's Verifier (and PACS client) once."""
    global _VERIFIER, _CLIENT
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _VERIFIER = settings.open()
    _CLIENT = None if pacs is None else PacsClient(pacs)


def _close_worker() -> None:
    global _VERIFIER, _CLIENT
    if _VERIFIER is not None:
        _VERIFIER.close()
    _VERIFIER, _CLIENT = None, None


def _verify_task(task: Task, verifier: Verifier | None = None, client: PacsClient | None = None) -> dict[str, Any]:
    """One record for one task; never raises for a bad input (an unexpected exception is recorded too).

    Uses this process's Verifier and PACS client (:func:`_init_worker`) unless given others."""
    verifier = verifier or _VERIFIER
    client = client or _CLIENT
    assert verifier is not None
    start = time.perf_counter()
    try:
        if task.instance is None:
            assert task.path is not None
            verdict = verifier.try_verify_file(task.path, label=task.key)
        else:
            assert client is not None
            verdict = _verify_instance(task, verifier, client)
    except Exception as error:  # a bug must not end an archive-wide scan: record it, keep going
        verdict = Verdict(file=task.key, kind=VerdictKind.ERROR, error_code=1,
                          error=f"{task.key}: internal error, please report it: {type(error).__name__}: "
                                + " ".join(str(error).split()), seconds=time.perf_counter() - start)
    return _record(task, verdict)


def _verify_instance(task: Task, verifier: Verifier, client: PacsClient) -> Verdict:
    assert task.instance is not None
    ref = task.instance
    source = {"pacs": client.url, "instance_id": ref.instance_id, "sop_instance_uid": ref.sop_instance_uid}
    start = time.perf_counter()
    try:
        data = client.retrieve(ref)
    except MedsignError as error:
        return Verdict.from_error(task.key, error, seconds=time.perf_counter() - start, source=source)
    with tempfile.TemporaryDirectory(prefix="medsign-pacs-") as folder:
        path = Path(folder) / "instance.dcm"
        path.write_bytes(data)
        verdict = verifier.try_verify_file(path, label=task.key, source=source)
    if ref.occurrences > 1:
        note = (f"duplicate SOP Instance UID: object {ref.occurrence + 1} of {ref.occurrences} stored under "
                "the same study, series and instance UIDs")
        verdict = replace(verdict, notes=(*verdict.notes, note))
    return verdict


def _record(task: Task, verdict: Verdict) -> dict[str, Any]:
    record = verdict.to_dict()
    record["file"] = task.key
    if task.path is not None:
        record["size"], record["mtime_ns"] = task.size, task.mtime_ns
    return record


def _crash_record(task: Task) -> dict[str, Any]:
    verdict = Verdict(file=task.key, kind=VerdictKind.ERROR, error_code=1,
                      error=f"{task.key}: the verifying process died while reading this file (a decoder crash "
                            "or the out-of-memory killer)")
    return _record(task, verdict)


def _already_done(task: Task, record: dict[str, Any] | None) -> bool:
    if record is None:
        return False
    if task.instance is not None:
        return True
    return task.size is not None and record.get("size") == task.size and record.get("mtime_ns") == task.mtime_ns


def _count(summary: ScanSummary, record: dict[str, Any]) -> None:
    summary.counts[record["verdict"]] += 1
    kind = VerdictKind(record["verdict"])
    if kind is VerdictKind.ERROR:
        summary.errors.append(record)
    elif kind.is_alarm:
        summary.alarms.append(record)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
