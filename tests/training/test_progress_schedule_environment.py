"""The progress protocol, its Rich rendering, the one schedule and the environment record."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from medsign_forensics.cli.progress import describe, rich_progress
from medsign_forensics.training.environment import environment, load_average, machine_line
from medsign_forensics.training.progress import ProgressEvent, notify
from medsign_forensics.training.schedule import WarmupCosine


def test_notify_sends_typed_events_and_tolerates_no_listener() -> None:
    events: list[ProgressEvent] = []
    notify(events.append, "fine-tuning", 3, 10, {"loss": 0.25})
    notify(events.append, "fine-tuning", 4, None)
    notify(None, "ignored", 1, 1)
    assert events == [ProgressEvent("fine-tuning", 3, 10, {"loss": 0.25}), ProgressEvent("fine-tuning", 4, None)]
    with pytest.raises(AttributeError):
        events[0].done = 5  # type: ignore[misc]  # events are immutable


def test_rich_renderer_draws_one_bar_per_task_and_is_off_for_json() -> None:
    with rich_progress(False) as progress:
        assert progress is None
    with rich_progress(True) as progress:
        assert progress is not None
        progress(ProgressEvent("a", 0, 4))
        progress(ProgressEvent("a", 4, 4, {"loss": 0.5, "bit_accuracy": 0.75}))
        progress(ProgressEvent("b", 1, None))
    assert describe({"loss": 0.5, "bit_accuracy": 0.75, "ignored": 1.0}) == "loss 0.5000  bit acc 0.750"


def test_warmup_cosine_schedule() -> None:
    schedule = WarmupCosine(total=100, warmup=20, floor=0.002)
    assert schedule.factor(0) == pytest.approx(1 / 20)
    assert schedule.factor(19) == pytest.approx(1.0)
    assert schedule.factor(60) == pytest.approx(0.002 + 0.998 * 0.5)
    assert schedule.factor(100) == pytest.approx(0.002) and schedule.factor(500) == pytest.approx(0.002)
    constant = WarmupCosine(total=10, warmup=4, floor=1.0)  # warm-up, then hold
    assert [constant.factor(s) for s in (0, 3, 4, 9, 50)] == [0.25, 1.0, 1.0, 1.0, 1.0]
    assert WarmupCosine(total=10).factor(0) == 1.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert schedule.apply(optimizer, 0.1, 0) == pytest.approx(0.005)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    with pytest.raises(ValueError):
        WarmupCosine(total=10, floor=2.0)


def test_environment_describes_this_machine() -> None:
    record = environment("cpu")
    assert record["cpus"] == os.cpu_count() and record["machine"] == platform.machine()
    assert record["software"]["torch"] == torch.__version__
    assert record["hardware"].startswith(f"{os.cpu_count()}-core CPU")
    line = machine_line("cpu")
    assert line.startswith(record["hardware"]) and f"torch {torch.__version__}" in line
    assert len(load_average().split("/")) == 3
