"""Rich rendering of the library's progress events (:mod:`medsign_forensics.training.progress`): one bar per
task, with the latest logged metrics beside it. The only place training progress is drawn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from medsign_forensics.cli.common import console
from medsign_forensics.training.progress import ProgressEvent, ProgressFn

# How each metric a trainer logs is shown (in this order); others are not drawn.
_METRICS = (
    ("loss", "loss {:.4f}"),
    ("bit_accuracy", "bit acc {:.3f}"),
    ("psnr", "PSNR {:.1f}"),
    ("seconds_per_step", "{:.2f} s/step"),
)


def describe(metrics: dict[str, float]) -> str:
    """The metrics line of a bar, e.g. ``loss 0.1234  bit acc 0.981  0.41 s/step``."""
    return "  ".join(template.format(metrics[name]) for name, template in _METRICS if name in metrics)


@contextmanager
def rich_progress(enabled: bool = True) -> Iterator[ProgressFn | None]:
    """Yield a :class:`ProgressFn` drawing every task's bar (None when ``enabled`` is False, e.g. for --json)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def draw(event: ProgressEvent) -> None:
            if event.task not in tasks:
                tasks[event.task] = bar.add_task(event.task, total=event.total, completed=event.done, info="")
            info: dict[str, Any] = {"info": describe(dict(event.metrics))} if event.metrics else {}
            bar.update(tasks[event.task], completed=event.done, total=event.total, **info)

        yield draw
