"""Verify a scan's files on a Dask cluster: one that already runs (``tcp://scheduler:8786``) or one started here.

    from medsign_forensics.cluster import DaskEngine
    from medsign_forensics.scan import VerifierSettings, scan_folder

    scan_folder("/archive", settings=VerifierSettings(), jsonl=Path("scan.jsonl"),
                engine=DaskEngine(address="tcp://scheduler:8786"))

dask.distributed is the optional ``cluster`` extra (``pip install medsign-forensics[cluster]``). It is imported
when a :class:`DaskEngine` is made, never when this module or the toolkit is imported.

* The engine is only a source of records. This process lists the files (or PACS instances) as a local scan
  does, and stays the ONE writer: the JSONL report is appended to as records come back (so it stays resumable),
  and the CSV report and summary are those of :mod:`medsign_forensics.scan`.
* Files are sent in tasks of ``files_per_task`` files; at most ``tasks_per_thread`` tasks per worker thread are
  in flight (re-counted as workers come and go), so a scan of millions of files never holds millions of futures.
  One file per task (the default) keeps progress and retries per file; several per task already pay on two cores
  (8 per task: 66 against 53 files/s) and a large cluster needs them, since the client and scheduler spend 1-2 ms
  on each task (benchmarks/results/scan_cluster_speed.md).
* Each worker thread opens its Verifier (extractor, registry, policy, trust) once and keeps it for every later
  task with the same settings; a Verifier is not thread-safe, so a worker with several threads has one per
  thread. Torch runs on one thread per worker process, as in the local engine's workers.
* Workers open the files, the registry and the extractor at this process's absolute paths: every worker must see
  them there (a shared or mounted file system). PACS instances are fetched by the workers themselves.
* Faults. A worker that dies (killed, out of memory) loses nothing: the scheduler runs its tasks again on other
  workers. A task that was running on ``allowed-failures + 1`` workers that died fails with Dask's KilledWorker;
  since the scheduler blames every task that was on a dying worker, the files of such a task are run again once
  the rest of the scan is done, one at a time with nothing else in flight, and a file that kills its worker even
  then is recorded as the local scan records a crashing file. So a file that crashes its decoder costs at most
  ``2 x (allowed-failures + 1)`` worker restarts. The scheduler going away ends the scan with
  :class:`ClusterError` (exit code 2); the JSONL report then holds every file verified so far, and ``--resume``
  continues the scan.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medsign_forensics import __version__
from medsign_forensics.errors import ClusterError, InputError, MedsignError
from medsign_forensics.pacs import PacsClient, PacsConfig
from medsign_forensics.scan import Task, VerifierSettings, _crash_record, _verify_task
from medsign_forensics.verify import Verifier

INSTALL_HINT = "pip install medsign-forensics[cluster]"
DEFAULT_ALLOWED_FAILURES = 2
RECOUNT_THREADS_S = 5.0  # how often the in-flight limit follows the cluster's size
LOST_GRACE_S = 5.0  # how long the client may be reconnecting before the scan ends
POLL_S = 0.005  # how often the client looks for finished tasks when none is ready
# the scheduler's HTTP server (health checks; no dashboard) on any free port, not 8787 that another may hold
NO_FIXED_PORTS = {"dashboard_address": ":0"}


@dataclass(frozen=True)
class DaskEngine:
    """Verify on a Dask cluster: the scheduler at ``address``, or (``address=None``) a local cluster of
    ``workers`` processes with one thread each, started for the scan and stopped after it.

    ``allowed_failures`` (local cluster only; an existing scheduler keeps its own
    ``distributed.scheduler.allowed-failures``): how many worker deaths a task may cause before it fails with
    KilledWorker. ``connect_timeout``: seconds to reach the scheduler (default: Dask's
    ``distributed.comm.timeouts.connect``, 30 s unless configured, e.g. by
    ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=10s``); ``worker_timeout``: seconds to wait for a scheduler without
    workers to get its first one.
    """

    address: str | None = None
    workers: int = 2
    files_per_task: int = 1
    tasks_per_thread: int = 4
    allowed_failures: int = DEFAULT_ALLOWED_FAILURES
    connect_timeout: float | None = None
    worker_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("workers", "files_per_task", "tasks_per_thread"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.allowed_failures < 0:
            raise InputError(f"allowed-failures must be at least 0; got {self.allowed_failures}")
        require_distributed()

    @property
    def label(self) -> str:
        """Where the files are verified, in words."""
        if self.address is None:
            return f"a local Dask cluster of {self.workers} worker process(es)"
        return f"the Dask cluster at {self.address}"

    def results(self, tasks: list[Task], *, settings: VerifierSettings,
                pacs: PacsConfig | None) -> Iterator[dict[str, Any]]:
        """Verify ``tasks`` on the cluster, yielding each record as soon as it is back (in completion order)."""
        distributed = require_distributed()
        settings = _absolute_settings(settings)
        tasks = [_absolute_task(task) for task in tasks]
        with _quiet_logs(), self._client(distributed) as client:
            self._check_workers(client)
            yield from _Run(self, client, distributed, settings, pacs).records(tasks)

    # -- connecting ------------------------------------------------------------------------------------------

    @contextmanager
    def _client(self, distributed: Any) -> Iterator[Any]:
        if self.address is None:
            import dask

            config = {"distributed.scheduler.allowed-failures": self.allowed_failures,
                      # one task per worker thread: a worker that dies takes only its own file with it
                      "distributed.scheduler.worker-saturation": 1.0}
            with dask.config.set(config):
                cluster = distributed.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                   dashboard_address=None, silence_logs=logging.CRITICAL,
                                                   scheduler_kwargs=NO_FIXED_PORTS)
            try:
                with distributed.Client(cluster, set_as_default=False) as client:
                    yield client
            finally:
                cluster.close()
            return
        import dask

        timeout = self.connect_timeout
        if timeout is None:
            timeout = dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")
        try:
            client = distributed.Client(self.address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {self.address} ({_one_line(error)}); check "
                               "--cluster and that the scheduler runs") from None
        except ValueError as error:
            raise ClusterError(f"{self.address!r} is not a Dask scheduler address ({_one_line(error)}); give "
                               "e.g. tcp://scheduler:8786") from None
        try:
            yield client
        finally:
            client.close(timeout=timeout)

    def _check_workers(self, client: Any) -> None:
        try:
            client.wait_for_workers(1, timeout=self.worker_timeout)
        except OSError as error:  # TimeoutError is one too
            if isinstance(error, TimeoutError) and client.status == "running":
                raise ClusterError(f"{self.label} has no worker after {self.worker_timeout:g} s; start workers "
                                   "(`dask worker SCHEDULER`) with medsign-forensics installed") from None
            raise _lost(self, "scheduler-connection-lost", 0) from None  # CommClosedError, a failed reconnection
        try:
            versions = client.run(_worker_version)
        except OSError:
            raise _lost(self, "scheduler-connection-lost", 0) from None
        except Exception as error:  # e.g. ModuleNotFoundError unpickling this function on a worker
            raise ClusterError(f"a worker of {self.label} cannot run medsign-forensics ({type(error).__name__}: "
                               f"{_one_line(error)}); install medsign-forensics {__version__} on every worker"
                               ) from None
        wrong = {address: version for address, version in versions.items() if version != __version__}
        if wrong:
            address, version = next(iter(wrong.items()))
            raise ClusterError(f"worker {address} runs medsign-forensics {version}, this client {__version__} "
                               f"({len(wrong)} of {len(versions)} workers differ); install the same version on "
                               "every worker")


class _Run:
    """One scan's conversation with the scheduler: submit, collect, set suspects aside, isolate them."""

    def __init__(self, engine: DaskEngine, client: Any, distributed: Any, settings: VerifierSettings,
                 pacs: PacsConfig | None) -> None:
        self.engine = engine
        self.client = client
        self.distributed = distributed
        self.settings = settings
        self.pacs = pacs
        self.prefix = f"medsign-verify-{uuid.uuid4().hex[:12]}"
        self.numbers = itertools.count()
        self.in_flight: dict[Any, tuple[Task, ...]] = {}
        self.completed = distributed.as_completed(loop=client.loop, with_results=True, raise_errors=False)
        self.delivered = 0

    def records(self, tasks: list[Task]) -> Iterator[dict[str, Any]]:
        size = self.engine.files_per_task
        batches = deque(tuple(tasks[i:i + size]) for i in range(0, len(tasks), size))
        suspects: list[Task] = []  # their task failed with KilledWorker: maybe theirs, maybe a neighbour's fault
        limit, counted = self._limit(), time.monotonic()
        while batches or self.in_flight:
            while batches and len(self.in_flight) < limit:
                self._submit(batches.popleft())
            batch, records = self._next()
            if records is None:
                suspects.extend(batch)
            else:
                yield from self._deliver(records)
            if time.monotonic() - counted > RECOUNT_THREADS_S:
                limit, counted = self._limit(), time.monotonic()
        for task in suspects:  # alone on the cluster: if its worker dies now, this file is the cause
            self._submit((task,), alone=True)
            _, records = self._next()
            yield from self._deliver([_crash_record(task)] if records is None else records)

    def _deliver(self, records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            self.delivered += 1
            yield record

    def _limit(self) -> int:
        try:
            threads = sum(self.client.nthreads().values())
        except OSError:  # the scheduler is going away: the next result says so
            threads = 1
        return self.engine.tasks_per_thread * max(threads, 1)

    def _submit(self, batch: tuple[Task, ...], *, alone: bool = False) -> None:
        key = f"{self.prefix}{'-alone' if alone else ''}-{next(self.numbers)}"
        future = self.client.submit(_verify_batch, batch, self.settings, self.pacs, key=key, pure=False)
        self.in_flight[future] = batch
        self.completed.add(future)

    def _next(self) -> tuple[tuple[Task, ...], list[dict[str, Any]] | None]:
        """The next finished task's files and records (None: it failed with KilledWorker)."""
        lost_since: float | None = None
        while not self.completed.has_ready():
            # A lost scheduler cancels every future, which ends this wait; the watch is for a result that was
            # being fetched when the connection broke (Dask then never reports that future).
            if self.client.status == "running":
                lost_since = None
            elif lost_since is None:
                lost_since = time.monotonic()
            elif time.monotonic() - lost_since > LOST_GRACE_S:
                raise _lost(self.engine, "scheduler-connection-lost", self.delivered)
            time.sleep(POLL_S)
        future, outcome = next(self.completed)
        batch = self.in_flight.pop(future)
        if future.status == "finished":
            return batch, outcome
        if future.status == "error":
            error = outcome[1] if isinstance(outcome, tuple) else outcome
            if isinstance(error, self.distributed.KilledWorker):
                return batch, None
            if isinstance(error, MedsignError):  # a worker cannot open the extractor, registry or policy
                raise error
            raise ClusterError(f"a worker of {self.engine.label} failed on {batch[0].key} ({type(error).__name__}: "
                               f"{_one_line(error)}); every worker needs medsign-forensics {__version__} and the "
                               "files, registry and extractor at the same paths as this client")
        # cancelled: the connection to the scheduler was lost (or someone cancelled the scan's tasks)
        raise _lost(self.engine, getattr(outcome, "reason", None) or "unknown", self.delivered)


def _lost(engine: DaskEngine, reason: str, delivered: int) -> ClusterError:
    where = f"at {engine.address}" if engine.address else "of the local cluster"
    what = (f"lost the connection to the Dask scheduler {where}" if reason == "scheduler-connection-lost"
            else f"the Dask scheduler {where} cancelled the scan's tasks ({reason})")
    return ClusterError(f"{what} after {delivered} record(s) came back; every one of them is in the JSONL report: "
                        "run the scan again with --resume once the scheduler is back")


# -- worker side ----------------------------------------------------------------------------------------------

_THREAD = threading.local()
_OPENED = {"verifiers": 0}  # Verifiers opened in this process (tests check that it is once per worker)


def _verify_batch(tasks: tuple[Task, ...], settings: VerifierSettings,
                  pacs: PacsConfig | None) -> list[dict[str, Any]]:
    """Runs on a worker: one record per task, with this thread's Verifier for ``settings``."""
    verifier, client = _thread_verifier(settings, pacs)
    return [_verify_task(task, verifier, client) for task in tasks]


def _thread_verifier(settings: VerifierSettings, pacs: PacsConfig | None) -> tuple[Verifier, PacsClient | None]:
    opened = getattr(_THREAD, "opened", None)
    if opened is not None and opened[0] == (settings, pacs):
        return opened[1], opened[2]
    if opened is not None:
        opened[1].close()
        _THREAD.opened = None
    import torch

    torch.set_num_threads(1)  # one image is too small to share between threads (see scan.py)
    verifier = settings.open()
    client = None if pacs is None else PacsClient(pacs)
    _THREAD.opened = ((settings, pacs), verifier, client)
    _OPENED["verifiers"] += 1
    return verifier, client


def _worker_version() -> str:
    return __version__


def opened_verifiers() -> int:
    """How many Verifiers this process has opened for Dask tasks (call it on workers with ``Client.run``)."""
    return _OPENED["verifiers"]


# -- helpers --------------------------------------------------------------------------------------------------


def require_distributed() -> Any:
    """The ``distributed`` module, or a :class:`ClusterError` that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"the Dask engine needs dask.distributed, which is not installed; run `{INSTALL_HINT}`"
                           ) from None
    return distributed


def _absolute_task(task: Task) -> Task:
    if task.path is None or task.path.is_absolute():
        return task
    return replace(task, path=task.path.absolute())


def _absolute_settings(settings: VerifierSettings) -> VerifierSettings:
    policy = settings.policy
    if policy is not None and ("/" in policy or "\\" in policy or policy.endswith(".toml")):
        policy = str(Path(policy).absolute())  # a path, not a shipped policy's name
    return replace(settings, registry=_absolute(settings.registry), extractor=_absolute(settings.extractor),
                   trust=tuple(Path(path).absolute() for path in settings.trust), policy=policy)


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).absolute()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Dask's own log lines (a worker restarted, a client reconnecting) would break the progress bar and the
    one-line errors; what matters reaches the records or a ClusterError."""
    handlers = [handler for handler in logging.getLogger("distributed").handlers
                if isinstance(handler, logging.StreamHandler)]  # what Dask installs; a user's own are left alone
    levels = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels):
            handler.setLevel(level)


def default_workers() -> int:
    """Workers of a local cluster when none are asked for: one per CPU core."""
    return max(1, os.cpu_count() or 1)
