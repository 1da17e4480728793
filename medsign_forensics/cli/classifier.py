"""`medsign classifier predict|train|evaluate`: the phantom finding classifier that judges diagnostic consistency."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.cli.progress import rich_progress
from medsign_forensics.errors import InputError

if TYPE_CHECKING:
    from medsign_forensics.phantom.classifier_train import LabelScore

WEIGHTS_HELP = "Classifier folder; default: the shipped weights."


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="classifier",
        rich_markup_mode="rich",
        no_args_is_help=True,
        help="The phantom finding classifier (kind x side): predict, train, evaluate.",
    )

    @group.command("predict")
    @handle_errors
    def predict_command(
        images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, TIFF, DICOM, ...).")],
        weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
        threshold: Annotated[float, typer.Option(help="Probability at which a label is listed as found.")] = 0.5,
        json_output: Annotated[bool, typer.Option("--json", help="Print every probability as JSON.")] = False,
    ) -> None:
        """Print the finding probabilities of each image (sides are the patient's)."""
        import numpy as np

        from medsign_forensics.imageio import read_image
        from medsign_forensics.phantom.classifier import LABELS, load_classifier, predict

        model = load_classifier(weights)
        results: list[dict[str, Any]] = []
        for path in images:
            probabilities = predict(model, read_image(path).pixels)[0]
            found = [LABELS[i] for i in np.flatnonzero(probabilities >= threshold)]
            named = dict(zip(LABELS, map(float, probabilities)))
            results.append({"file": str(path), "probabilities": named, "found": found})
        if json_output:
            print_json(results)
            return
        for result in results:
            listed = ", ".join(result["found"]) or "no finding"
            console.print(f"[bold]{result['file']}[/]: {listed}")
            top = sorted(result["probabilities"].items(), key=lambda item: -item[1])[:5]
            console.print("  " + "  ".join(f"{name} {p:.3f}" for name, p in top), highlight=False)

    @group.command("train")
    @handle_errors
    def train_command(
        out: Annotated[
            Path, typer.Option(help="Run folder (render cache, checkpoint, log, weights); resumes if present.")
        ],
        steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
        n_random: Annotated[int | None, typer.Option(help="Training phantoms with random findings.")] = None,
        report_repeats: Annotated[int | None, typer.Option(help="Renders per training-split report.")] = None,
        n_random_eval: Annotated[int | None, typer.Option(help="Held-out phantoms with random findings.")] = None,
        reports: Annotated[
            str | None, typer.Option(help="Report corpus for realistic finding lists (default open-i), or 'none'.")
        ] = None,
        workers: Annotated[int | None, typer.Option(help="Rendering processes.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed of sampling, batch order and augmentation.")] = None,
        device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
        tiny: Annotated[bool, typer.Option(help="Use the tiny test config (seconds on CPU; useless weights).")] = False,
        export: Annotated[Path | None, typer.Option(help="Also copy the finished weights folder here.")] = None,
        json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Render phantoms, train the classifier, report held-out AUROC per label."""
        from medsign_forensics.phantom.classifier_train import TrainConfig, train_classifier

        given: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "n_random": n_random,
                                 "report_repeats": report_repeats, "n_random_eval": n_random_eval, "workers": workers,
                                 "seed": seed}
        config = replace(
            TrainConfig.tiny() if tiny else TrainConfig(), **{k: v for k, v in given.items() if v is not None}
        )
        if reports is not None:
            config = replace(config, reports=None if reports.strip().lower() == "none" else reports)
        command = _command_line({
            "out": out, "steps": steps, "batch_size": batch_size, "n_random": n_random,
            "report_repeats": report_repeats, "n_random_eval": n_random_eval, "reports": reports, "workers": workers,
            "seed": seed, "device": None if device == "cpu" else device, "tiny": tiny, "export": export,
        })
        with rich_progress(not json_output) as progress:
            result = train_classifier(config, out, device=device, progress=progress, command=command)
        if export is not None:
            if export.exists() and not export.is_dir():
                raise InputError("export target exists and is not a folder; give a folder path", path=export)
            export.mkdir(parents=True, exist_ok=True)
            for name in ("model.safetensors", "config.json"):
                shutil.copy2(result.weights_dir / name, export / name)
        summary = {
            "weights": str(result.weights_dir), "weights_sha256": result.weights_sha256,
            "train_images": result.train_images, "eval_images": result.eval_images,
            "render_cpu_seconds": round(result.render_cpu_seconds, 1),
            "train_seconds": round(result.train_seconds, 1), "train_cpu_seconds": round(result.train_cpu_seconds, 1),
            "final_loss": result.final_loss,
            "labels": [_score_dict(s) for s in result.scores],
        }
        if json_output:
            print_json(summary)
            return
        _print_scores(result.scores)
        console.print(f"weights: {result.weights_dir} (SHA-256 {result.weights_sha256[:16]}...)")

    @group.command("evaluate")
    @handle_errors
    def evaluate_command(
        cache: Annotated[Path, typer.Option(help="Folder for the held-out render cache (reused when present).")],
        weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
        workers: Annotated[int | None, typer.Option(help="Rendering processes.")] = None,
        json_output: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
    ) -> None:
        """Held-out AUROC per label on the phantoms the weights' own training config holds out."""
        from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, read_classifier_config
        from medsign_forensics.phantom.classifier_train import TrainConfig, evaluate, held_out_data

        folder = weights or DEFAULT_CLASSIFIER_DIR
        model = load_classifier(folder)
        meta = read_classifier_config(folder)
        if "train_config" not in meta:
            message = "classifier config.json records no training config, so its held-out set is unknown"
            raise InputError(message, path=folder)
        config = TrainConfig.from_dict(meta["train_config"])
        with rich_progress(not json_output) as progress:
            data = held_out_data(config, cache, workers=workers, progress=progress)
        scores = evaluate(model, data)
        if json_output:
            print_json([_score_dict(s) for s in scores])
            return
        _print_scores(scores)

    app.add_typer(group)


def _score_dict(score: LabelScore) -> dict[str, object]:
    return {
        "label": score.label, "auroc": score.auroc, "positives": score.positives, "negatives": score.negatives,
        "enough_support": score.enough_support,
    }


def _command_line(given: dict[str, object]) -> str:
    """The training command rebuilt from the options that were set, to record beside the weights."""
    words = ["medsign", "classifier", "train"]
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _print_scores(scores: Sequence[LabelScore]) -> None:
    from medsign_forensics.phantom.classifier_train import MIN_SUPPORT

    table = Table(title=f"held-out AUROC (target >= 0.95 where >= {MIN_SUPPORT} positives)")
    for column in ("label", "AUROC", "positives", "negatives"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for s in scores:
        auroc = "-" if s.auroc is None else f"{s.auroc:.4f}"
        style = "" if not s.enough_support or s.auroc is None or s.auroc >= 0.95 else "red"
        table.add_row(s.label, auroc, str(s.positives), str(s.negatives), style=style)
    console.print(table)
