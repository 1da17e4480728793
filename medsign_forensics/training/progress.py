"""The one progress protocol of long-running library calls.

Library code never draws: it calls a :class:`ProgressFn` with a typed :class:`ProgressEvent` (which task, how
far, and the latest logged metrics), and the caller decides what to do with it. The CLI renders events with
Rich (:mod:`medsign_forensics.cli.progress`); a test records them or raises from one to simulate a crash at a
chosen step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` units of ``task`` are finished (``total`` None: not known yet).

    ``metrics`` holds the means of the logging window that ended at this event (loss, bit accuracy, seconds
    per step, ...); it is empty for events between log lines.
    """

    task: str
    done: int
    total: int | None
    metrics: Mapping[str, float] = field(default_factory=dict)


class ProgressFn(Protocol):
    """Receives every progress event of a call; an exception raised here aborts the call."""

    def __call__(self, event: ProgressEvent) -> None: ...


def notify(
    progress: ProgressFn | None,
    task: str,
    done: int,
    total: int | None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Send one event to ``progress`` unless it is None (no one is listening)."""
    if progress is not None:
        progress(ProgressEvent(task=task, done=done, total=total, metrics=dict(metrics or {})))
