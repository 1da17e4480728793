"""`medsign train --stage extractor`: MedSign stage-1 training (HiDDeN extractor) with a progress bar.

Stages are dispatched through ``_STAGES``: a later stage (decoder fine-tuning, ``all``) adds a member to
:class:`TrainStage`, a runner function, and its own options; only stages that work are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.errors import InputError


class TrainStage(str, Enum):
    """What `medsign train` trains."""

    EXTRACTOR = "extractor"


def _train_extractor(options: dict[str, Any]) -> dict[str, Any]:
    from medsign_forensics.watermark.hidden import HiddenConfig
    from medsign_forensics.watermark.train_extractor import (
        DEFAULT_ATTACKS,
        PHANTOM,
        ExtractorTrainConfig,
        train_extractor,
    )

    data = options["data"]
    if data is None:
        raise InputError("--stage extractor needs --data: a folder of images or 'phantom'")
    if data != PHANTOM and not Path(data).is_dir():
        raise InputError("--data must be an existing folder of images or 'phantom'", path=data)
    attacks = DEFAULT_ATTACKS if options["attacks"] is None else tuple(
        name.strip() for name in options["attacks"].split(",") if name.strip()
    )
    overrides = {
        key: options[key]
        for key in ("steps", "batch", "size", "lr", "seed", "whiten_images", "phantom_count")
        if options[key] is not None
    }
    model = HiddenConfig() if options["bits"] is None else HiddenConfig(bits=options["bits"])
    config = ExtractorTrainConfig(
        data=data if data == PHANTOM else str(Path(data).resolve()),
        attacks=attacks,
        device=options["device"],
        model=model,
        **overrides,
    )
    quiet = options["json"]
    with Progress(
        TextColumn("[bold]stage 1[/] extractor"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  bit acc {task.fields[acc]}  {task.fields[sps]} s/step"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=config.steps, loss="-", acc="-", sps="-")

        def on_log(record: Any) -> None:
            progress.update(
                task,
                completed=record.step,
                loss=f"{record.loss:.4f}",
                acc=f"{record.bit_accuracy:.3f}",
                sps=f"{record.seconds_per_step:.2f}",
            )

        result = train_extractor(config, Path(options["out"]), resume=options["resume"], on_log=on_log)
    last = result.last
    return {
        "stage": TrainStage.EXTRACTOR.value,
        "out": str(result.out),
        "steps": result.steps,
        "loss": None if last is None else last.loss,
        "bit_accuracy": None if last is None else last.bit_accuracy,
        "seconds_per_step": None if last is None else last.seconds_per_step,
        "extractor_sha256": result.extractor_sha256,
        "whitening": result.whitening,
    }


_STAGES: dict[TrainStage, Callable[[dict[str, Any]], dict[str, Any]]] = {
    TrainStage.EXTRACTOR: _train_extractor,
}


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"medsign train --stage {summary['stage']}", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key == "stage":
            continue
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("train")
    @handle_errors
    def train_command(
        stage: Annotated[TrainStage, typer.Option(help="What to train.", case_sensitive=False)],
        out: Annotated[Path, typer.Option(help="Run folder: weights, config, log, checkpoint.")],
        data: Annotated[
            Optional[str], typer.Option(help="Training images: a folder (PNG/JPEG, any size) or 'phantom'.")
        ] = None,
        phantoms: Annotated[
            Optional[int], typer.Option(help="With --data phantom: how many distinct training phantoms to render.")
        ] = None,
        steps: Annotated[Optional[int], typer.Option(help="Optimiser steps in total.")] = None,
        batch: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
        size: Annotated[Optional[int], typer.Option(help="Training crop size in pixels.")] = None,
        bits: Annotated[Optional[int], typer.Option(help="Key length: 32, 48 or 64.")] = None,
        attacks: Annotated[
            Optional[str], typer.Option(help="Comma-separated attack names, one drawn per batch (default set if omitted).")
        ] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).")] = None,
        device: Annotated[str, typer.Option(help="torch device: cpu or cuda.")] = "cpu",
        resume: Annotated[bool, typer.Option(help="Continue from the run folder's checkpoint.")] = False,
        seed: Annotated[Optional[int], typer.Option(help="Seed of data, keys, attacks and initialisation.")] = None,
        whiten_images: Annotated[
            Optional[int], typer.Option(help="Fit PCA whitening on this many unwatermarked images after training.")
        ] = None,
        json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON, no progress bar.")] = False,
    ) -> None:
        """Train a model stage. [bold]extractor[/]: HiDDeN encoder/extractor pre-training (MedSign stage 1)."""
        options = {
            "data": data, "out": out, "phantom_count": phantoms, "steps": steps, "batch": batch, "size": size, "bits": bits,
            "attacks": attacks, "lr": lr, "device": device, "resume": resume, "seed": seed,
            "whiten_images": whiten_images, "json": json_output,
        }
        summary = _STAGES[stage](options)
        if json_output:
            print_json(summary)
        else:
            _print_summary(summary)
