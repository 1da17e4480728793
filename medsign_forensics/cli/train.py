"""`medsign train`: MedSign stage 1 (``--stage extractor``: HiDDeN extractor), stage 2 (``--dataset cxr|fundus``,
i.e. ``--stage decoder``: decoder fine-tuning into a deployment folder) and both (``--stage all``), with progress.

Stages are dispatched through ``_STAGES``: a later stage (decoder fine-tuning, ``all``) adds a member to
:class:`TrainStage`, a runner function, and its own options; only stages that work are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.cli.progress import rich_progress
from medsign_forensics.errors import InputError


class TrainStage(str, Enum):
    """What `medsign train` trains."""

    EXTRACTOR = "extractor"
    DECODER = "decoder"
    ALL = "all"


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
        for key in ("steps", "batch", "size", "lr", "seed", "whiten_images", "phantom_count", "clean_steps")
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
    with rich_progress(not options["json"]) as progress:
        result = train_extractor(config, Path(options["out"]), resume=options["resume"], progress=progress)
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


def _decoder_key(options: dict[str, Any]) -> Any:
    """The deployment key: issued by a registry (--registry + --provenance-id) or explicit (--key, unregistered)."""
    from medsign_forensics.watermark.deployment import key_from_hex, key_from_registry

    registry, provenance_id, key = options["registry"], options["provenance_id"], options["key"]
    if key is not None and (registry is not None or provenance_id is not None):
        raise InputError("give either --registry DIR --provenance-id ID or --key HEX, not both")
    if key is not None:
        return key_from_hex(key)
    if registry is None or provenance_id is None:
        raise InputError(
            "the decoder needs a key: --registry DIR --provenance-id ID (issued with `medsign keys issue`) or, "
            "for experiments, --key HEX (the deployment is then unregistered)"
        )
    return key_from_registry(registry, provenance_id)


def _loss_weights(text: str | None, dataset: str) -> Any:
    """``img=2.1,msg=7.5,...``: override some of the preset's loss weights."""
    from dataclasses import replace

    from medsign_forensics.config import preset

    if text is None:
        return None
    values: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ("img", "msg", "tv", "pre"):
            raise InputError(f"--loss-weights takes img=, msg=, tv= and pre= entries, got {part.strip()!r}")
        try:
            values[name] = float(value)
        except ValueError:
            raise InputError(f"--loss-weights: {value!r} is not a number") from None
    return replace(preset(dataset).weights, **values)


def _train_decoder(options: dict[str, Any], *, extractor: Path | None = None) -> dict[str, Any]:
    from medsign_forensics.config import preset
    from medsign_forensics.diffusion import load_model
    from medsign_forensics.watermark.train_decoder import DEFAULT_REPORTS, DecoderTrainConfig, train_decoder

    dataset = options["dataset"]
    if dataset is None:
        raise InputError("the decoder stage needs --dataset cxr or --dataset fundus")
    preset(dataset)  # an unknown name fails here, naming the known presets
    extractor = extractor if extractor is not None else options["extractor"]
    if extractor is None:
        from medsign_forensics.config import DEFAULT_EXTRACTOR_DIR

        extractor = DEFAULT_EXTRACTOR_DIR  # the shipped spectral extractor: a watermark layer trains against it
    reports = options["reports"]
    if reports is None:
        if dataset != "cxr":
            raise InputError(f"--dataset {dataset} has no default report corpus; give --reports FILE or DIR")
        reports = DEFAULT_REPORTS
    key = _decoder_key(options)
    overrides = {
        "epochs": options["epochs"], "steps": options["steps"], "batch": options["batch"], "lr": options["lr"],
        "seed": options["seed"], "n_reports": options["n_reports"], "msg_temperature": options["msg_temperature"],
        "train_size": options["size"], "sample_steps": options["sample_steps"],
        "sample_batch": options["sample_batch"], "psnr": options["psnr"], "eval_reports": options["eval_reports"],
    }
    if options["attacks"] is not None:
        overrides["attacks"] = tuple(name.strip() for name in options["attacks"].split(",") if name.strip())
    config = DecoderTrainConfig(
        dataset=dataset,
        weights=_loss_weights(options["loss_weights"], dataset),
        ablation=options["ablation"],
        reports=reports if reports == DEFAULT_REPORTS or not Path(reports).exists() else str(Path(reports).resolve()),
        device=options["device"],
        **{name: value for name, value in overrides.items() if value is not None},
    )
    model = load_model(options["model"], device=options["device"])
    out = Path(options["out"])
    with rich_progress(not options["json"]) as progress:
        result = train_decoder(
            config, model=model, extractor=Path(extractor), key=key, out_dir=out,
            cache_dir=options["cache"], resume=options["resume"], progress=progress,
        )
    last = result.last
    return {
        "stage": TrainStage.DECODER.value,
        "out": str(result.out),
        "registered": key.registered,
        "provenance_id": None if key.provenance is None else key.provenance.provenance_id,
        "key_hex": key.key_hex,
        "ablation": config.ablation.value,
        "items": result.items,
        "steps": result.steps,
        "loss": None if last is None else last.loss["total"],
        "bit_accuracy": None if last is None else last.bit_accuracy,
        "psnr": None if last is None else last.psnr,
        "cache_seconds": result.cache_seconds,
        "train_seconds": result.train_seconds,
        "seconds_per_step": result.seconds_per_step,
        "decoder_sha256": result.decoder_sha256,
        "layer": result.layer,
        "held_out": result.held_out,
    }


# With --stage all and no --extractor, stage 1 runs with its own defaults except --extractor-steps, --bits, --data,
# --phantoms and --whiten-images (the shared options --steps, --batch, --size, --lr and --attacks configure the
# decoder stage) and fits whitening on this many unwatermarked images unless --whiten-images says otherwise.
ALL_STAGE_WHITEN_IMAGES = 2000


def _train_all(options: dict[str, Any]) -> dict[str, Any]:
    extractor = options["extractor"]
    summary: dict[str, Any] = {}
    if extractor is None:
        extractor = Path(options["out"]) / "extractor"
        stage1 = {
            **options, "out": extractor, "data": options["data"] or "phantom", "steps": options["extractor_steps"],
            "batch": None, "size": None, "lr": None, "attacks": None,
            "whiten_images": options["whiten_images"] or ALL_STAGE_WHITEN_IMAGES,
        }
        first = _train_extractor(stage1)
        summary = {f"extractor_{k}": v for k, v in first.items() if k in ("out", "steps", "extractor_sha256")}
    second = _train_decoder(options, extractor=Path(extractor))
    return {**second, **summary, "stage": TrainStage.ALL.value}


_STAGES: dict[TrainStage, Callable[[dict[str, Any]], dict[str, Any]]] = {
    TrainStage.EXTRACTOR: _train_extractor,
    TrainStage.DECODER: _train_decoder,
    TrainStage.ALL: _train_all,
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
        out: Annotated[
            Path, typer.Option(help="Run folder: weights, config, log, checkpoint (decoder: the deployment).")
        ],
        stage: Annotated[
            TrainStage | None,
            typer.Option(help="What to train (default: decoder when --dataset is given).", case_sensitive=False),
        ] = None,
        dataset: Annotated[
            str | None, typer.Option(help="Decoder fine-tuning preset (loss weights): cxr or fundus.")
        ] = None,
        model: Annotated[Path | None, typer.Option(help="Base model folder (default: the shipped mini-cxr).")] = None,
        reports: Annotated[
            str | None, typer.Option(help="Training reports: 'open-i' (cxr default), a report file or folder.")
        ] = None,
        extractor: Annotated[Path | None, typer.Option(
            help="Extractor folder (default: the shipped spectral extractor, against which a watermark layer trains; "
                 "a whitened HiDDeN extractor fine-tunes the decoder itself).")] = None,
        psnr: Annotated[float | None, typer.Option(
            help="Decoder, spectral extractor: the watermark layer's budget in dB (default 43).")] = None,
        eval_reports: Annotated[int | None, typer.Option(
            help="Decoder: held-out reports measured at the end and stored in the deployment (default 32).")] = None,
        registry: Annotated[Path | None, typer.Option(help="Key registry folder holding --provenance-id.")] = None,
        provenance_id: Annotated[str | None, typer.Option(help="Provenance ID issued by `medsign keys issue`.")] = None,
        key: Annotated[
            str | None, typer.Option(help="Explicit key in hex, for experiments: the deployment is unregistered.")
        ] = None,
        epochs: Annotated[
            int | None, typer.Option(help="Decoder: passes over the training reports (default 2).")
        ] = None,
        n_reports: Annotated[int | None, typer.Option(help="Decoder: train on a seeded subset of N reports.")] = None,
        ablation: Annotated[
            str, typer.Option(help="Decoder: none, no-cas, no-aas, no-tv, no-pre or stable-signature.")
        ] = "none",
        cache: Annotated[
            Path | None,
            typer.Option(help="Decoder: latent/map cache folder; share it between ablations (default OUT/cache)."),
        ] = None,
        loss_weights: Annotated[
            str | None, typer.Option(help="Decoder: override preset weights, e.g. img=2.1,msg=7.5,tv=3,pre=975.")
        ] = None,
        msg_temperature: Annotated[
            float | None, typer.Option(help="Decoder: BCE on logits / temperature (default 1.0).")
        ] = None,
        sample_steps: Annotated[
            int | None, typer.Option(help="Decoder: denoising steps when sampling the cache (default 25).")
        ] = None,
        sample_batch: Annotated[
            int | None, typer.Option(help="Decoder: reports sampled together (default 4; larger on a GPU).")
        ] = None,
        extractor_steps: Annotated[
            int | None, typer.Option(help="--stage all: stage-1 steps when no --extractor is given.")
        ] = None,
        data: Annotated[
            str | None, typer.Option(help="Training images: a folder (PNG/JPEG, any size) or 'phantom'.")
        ] = None,
        phantoms: Annotated[
            int | None, typer.Option(help="With --data phantom: how many distinct training phantoms to render.")
        ] = None,
        steps: Annotated[int | None, typer.Option(help="Optimiser steps in total.")] = None,
        batch: Annotated[int | None, typer.Option(help="Images per step.")] = None,
        size: Annotated[int | None, typer.Option(help="Training crop size in pixels.")] = None,
        bits: Annotated[int | None, typer.Option(help="Key length: 32, 48 or 64.")] = None,
        attacks: Annotated[
            str | None, typer.Option(help="Comma-separated attack names, one drawn per batch (default set if omitted).")
        ] = None,
        clean_steps: Annotated[
            int | None, typer.Option(help="Steps at the start with no attack (curriculum).")
        ] = None,
        lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
        device: Annotated[str, typer.Option(help="torch device: cpu or cuda.")] = "cpu",
        resume: Annotated[bool, typer.Option(help="Continue from the run folder's checkpoint.")] = False,
        seed: Annotated[int | None, typer.Option(help="Seed of data, keys, attacks and initialisation.")] = None,
        whiten_images: Annotated[
            int | None, typer.Option(help="Fit PCA whitening on this many unwatermarked images after training.")
        ] = None,
        json_output: Annotated[
            bool, typer.Option("--json", help="Print the summary as JSON, no progress bar.")
        ] = False,
    ) -> None:
        """Train a model stage. [bold]extractor[/]: HiDDeN encoder/extractor pre-training (MedSign stage 1).
        [bold]decoder[/] (or just --dataset): fine-tune the VAE decoder into a deployment folder (stage 2).
        [bold]all[/]: stage 1 first when no --extractor is given, then stage 2."""
        if stage is None:
            if dataset is None:
                raise InputError("give --stage extractor, or --dataset cxr|fundus to fine-tune a decoder")
            stage = TrainStage.DECODER
        options = {
            "data": data, "out": out, "phantom_count": phantoms, "steps": steps, "batch": batch, "size": size,
            "bits": bits, "attacks": attacks, "clean_steps": clean_steps, "lr": lr, "device": device, "resume": resume,
            "seed": seed,
            "whiten_images": whiten_images, "json": json_output, "dataset": dataset, "model": model,
            "reports": reports, "extractor": extractor, "registry": registry, "provenance_id": provenance_id,
            "key": key, "epochs": epochs, "n_reports": n_reports, "ablation": ablation, "cache": cache,
            "loss_weights": loss_weights, "msg_temperature": msg_temperature, "sample_steps": sample_steps,
            "extractor_steps": extractor_steps, "sample_batch": sample_batch, "psnr": psnr,
            "eval_reports": eval_reports,
        }
        summary = _STAGES[stage](options)
        if json_output:
            print_json(summary)
        else:
            _print_summary(summary)
