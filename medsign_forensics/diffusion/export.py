"""Export mini-cxr as a Stable Diffusion 1.x folder that a plain ``StableDiffusionPipeline.from_pretrained``
loads: fp16 safetensors (every file under 16 MiB, all under 30 MB), vocab.json + merges.txt, a SHA256SUMS
manifest that :func:`~medsign_forensics.diffusion.loader.load_model` verifies, and a MODEL_CARD.md that records
what the training run really did.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from medsign_forensics.diffusion.configs import (
    MiniCxrConfig,
    build_sampling_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from medsign_forensics.diffusion.layout import build_adapter
from medsign_forensics.diffusion.loader import (
    ADAPTER_FOLDER,
    MANIFEST_NAME,
    NAME_KEY,
    PROMPT_FORM_KEY,
    combined_sha256,
)
from medsign_forensics.diffusion.tokenizer import save_tokenizer, train_tokenizer
from medsign_forensics.errors import ModelError
from medsign_forensics.fileio import sha256_file, write_text
from medsign_forensics.training.weights import save_folder

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 30_000_000
MODEL_CARD_NAME = "MODEL_CARD.md"
#: The model card's section that only a real training run writes (see :func:`is_untrained`).
TRAINING_RUN_HEADING = "## Training run"


def export_model(
    folder: str | Path,
    *,
    config: MiniCxrConfig,
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    adapter: torch.nn.Module | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write an SD-1.x folder: fp16 safetensors, vocab.json + merges.txt, SHA256SUMS, MODEL_CARD.md, and the
    layout adapter (if any) in ``adapter/``, outside ``model_index.json`` so the pipeline loads without it.

    Raises ModelError if a weights file would exceed 16 MiB or all weights 30 MB (the shipping limits).
    ``card``, when given, holds the facts of the training run that the model card reports.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    folder = Path(folder)

    def write(tmp: Path) -> None:
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()  # casting notices about fp32-only modules (there are none)
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        pipeline = StableDiffusionPipeline(
            vae=copy.deepcopy(vae).to("cpu", torch.float16),
            text_encoder=copy.deepcopy(text_encoder).to("cpu", torch.float16),
            tokenizer=tokenizer,
            unet=copy.deepcopy(unet).to("cpu", torch.float16),
            scheduler=build_sampling_scheduler(config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        # mypy resolves diffusers' lazy export to its dummy class (no save_pretrained); at run time it is the pipeline
        pipeline.save_pretrained(str(tmp), safe_serialization=True)  # type: ignore[attr-defined]
        # transformers loads a model in the dtype its config names, diffusers in float32: name float32 so a
        # plain StableDiffusionPipeline.from_pretrained(folder) gets one dtype throughout (weights stay fp16).
        text_config = tmp / "text_encoder" / "config.json"
        _write_json_pretty(text_config, {**json.loads(text_config.read_text(encoding="utf-8")), "dtype": "float32"})
        _prefix_text_encoder_keys(tmp / "text_encoder" / "model.safetensors")
        index = tmp / "model_index.json"  # diffusers ignores keys that start with "_"; the loader reads them
        _write_json_pretty(index, {**json.loads(index.read_text(encoding="utf-8")), NAME_KEY: config.name,
                                   PROMPT_FORM_KEY: config.data.captions})
        shutil.rmtree(tmp / "tokenizer")
        save_tokenizer(tokenizer, tmp / "tokenizer")
        if adapter is not None:
            # same mypy limitation as the pipeline above: T2IAdapter resolves to diffusers' dummy class
            copy.deepcopy(adapter).to("cpu", torch.float16).save_pretrained(  # type: ignore[operator]
                str(tmp / ADAPTER_FOLDER), safe_serialization=True
            )
        weights = sorted(p for p in tmp.rglob("*.safetensors"))
        sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in weights}
        too_big = [f"{name} ({size / 2**20:.1f} MiB)" for name, size in sizes.items() if size >= MAX_FILE_BYTES]
        if too_big:
            raise ModelError(f"weights file(s) over the 16 MiB limit: {', '.join(too_big)}; shrink the config")
        if sum(sizes.values()) > MAX_TOTAL_BYTES:
            raise ModelError(
                f"the weights total {sum(sizes.values()) / 1e6:.1f} MB, over the 30 MB limit; shrink the config"
            )
        hashes = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST_NAME).write_text("".join(f"{h}  {n}\n" for n, h in sorted(hashes.items())), encoding="utf-8")
        weight_hashes = {name: hashes[name] for name in sizes}
        (tmp / MODEL_CARD_NAME).write_text(_model_card(config, sizes, weight_hashes, card), encoding="utf-8")
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes 0600; the model is for everyone

    save_folder(folder, write)
    return folder


def _prefix_text_encoder_keys(path: Path) -> None:
    """Store CLIPTextModel keys as ``text_model.*``, the SD-1.x layout every transformers version reads
    (transformers 5 saves them without the prefix, which transformers 4 would silently leave unloaded)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file(
        {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()},
        str(path),
        metadata={"format": "pt"},
    )


def build_random_model(folder: str | Path, *, config: MiniCxrConfig, texts: list[str], seed: int = 0) -> Path:
    """Export an untrained model of ``config``'s architecture (tokenizer trained on ``texts``).

    For tests, and for timing the architecture before it is trained; its model card says it is untrained.
    """
    spec = config.tokenizer
    tokenizer = train_tokenizer(
        texts, vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, max_token_length=spec.max_token_length
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = build_vae(config)
        text_encoder = build_text_encoder(
            config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        unet = build_unet(config)
        adapter = build_adapter(config) if config.layout.enabled else None
    return export_model(
        folder, config=config, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, adapter=adapter
    )


def is_untrained(folder: str | Path) -> bool:
    """True for a model folder whose model card records no training run (random weights, built for tests or
    timing): its figures in any evaluation are a pipeline check. Folders without a model card (e.g. a RoentGen
    download) are taken as trained."""
    card = Path(folder) / MODEL_CARD_NAME
    return card.is_file() and TRAINING_RUN_HEADING not in card.read_text(encoding="utf-8")


def _model_card(
    config: MiniCxrConfig, sizes: dict[str, int], hashes: dict[str, str], card: dict[str, Any] | None
) -> str:
    captions = "the report text" if config.data.captions == "report" else "each report's findings prompt"
    lines = [
        f"# {config.name}",
        "",
        "A small text-to-image latent diffusion model (Stable Diffusion 1.x layout) trained from scratch on",
        f"synthetic chest phantoms rendered from the findings of real radiology reports, captioned with {captions}",
        "(medsign-forensics' embedded default). It is not a model of real radiographs.",
        "",
        "## Architecture",
        f"- Output {config.image_size}x{config.image_size}, {config.image_channels} channel(s); latent "
        f"{config.vae.latent_channels}x{config.latent_size}x{config.latent_size}.",
        f"- VAE (AutoencoderKL) block channels {list(config.vae.block_out_channels)}; text encoder (CLIPTextModel) "
        f"{config.text_encoder.num_layers} layers x {config.text_encoder.hidden_size}; U-Net block channels "
        f"{list(config.unet.block_out_channels)}, cross-attention at every level.",
        f"- Prediction type {config.scheduler.prediction_type.value}; sampling with DPM-Solver++.",
        *([f"- Layout adapter (T2IAdapter in `{ADAPTER_FOLDER}/`, outside model_index.json): reads the report's "
           f"lesion layout, {config.layout.res_blocks} residual block(s) per level; {config.layout.dropout:.0%} of "
           "training items went without it."] if config.layout.enabled else []),
        "",
        "## Weights (fp16 safetensors)",
        "",
        "| file | MiB | SHA-256 |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {sizes[name] / 2**20:.2f} | `{hashes[name]}` |" for name in sorted(sizes)]
    lines += ["", f"Combined weights SHA-256: `{combined_sha256(hashes)}`", ""]
    if card is not None and card.get("init"):
        init = card["init"]
        kept = (
            "whose tokenizer it keeps; its VAE is this run's own (stage A below), so the U-Net's first and last "
            "convolutions restarted from random weights"
            if init.get("own_vae")
            else "whose VAE and tokenizer it keeps"
        )
        lines[2:5] = [
            "A small text-to-image latent diffusion model (Stable Diffusion 1.x layout), fine-tuned: stage B (text",
            "encoder + U-Net) continued on synthetic chest phantoms rendered from the findings of real radiology",
            f"reports, captioned with {captions}, from the model below, {kept}. It is not a model of real",
            "radiographs.",
            "",
            f"Initial model: {init['name']} at `{init['path']}`, combined weights SHA-256 `{init['weights_sha256']}`",
            "(its own model card says how it was trained).",
        ]
    if card is None:
        lines += [
            "## Training",
            "",
            "Untrained: random weights (built for tests or timing), no training run recorded.",
            "",
        ]
        return "\n".join(lines)
    lines += [
        "## Training data",
        f"- Corpus: {card['corpus']}, training split: {card['reports']} reports, "
        f"{card['renders_per_report']} phantom render(s) per report.",
        "",
        f"{TRAINING_RUN_HEADING} (recorded by the run itself)",
        "",
        "| stage | steps | wall time | hardware | mean loss, last 100 steps |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, stage in card["stages"].items():
        if "step" not in stage:  # not trained in this run (a fine-tune keeps its initial model's VAE)
            continue
        loss = stage.get("mean_loss_last_100")
        lines.append(
            f"| {name} | {stage.get('step', '?')} | {_duration(stage.get('wall_time_s', 0.0))} | "
            f"{stage.get('hardware', '?')} | {'n/a' if loss is None else f'{loss:.4f}'} |"
        )
    grounding = config.unet_train.grounding
    if grounding.enabled:
        lines += [
            "",
            f"Grounded cross-attention (TokenCompose-style): L_token weight {grounding.token_weight}, L_pixel weight "
            f"{grounding.pixel_weight}, location words {'grounded' if grounding.locations else 'not grounded'}"
            + (f"; denoising error inside lesions weighted 1 + {grounding.lesion_weight}."
               if grounding.lesion_weight else "."),
        ]
    lines += ["", "Commands, in order:", ""]
    lines += [f"- `{run['command']}` ({run['time']}; {run['hardware']})" for run in card["runs"]]
    if card["runs"]:
        software = card["runs"][-1]["software"]
        lines += ["", "Software of the last command: " + ", ".join(f"{k} {v}" for k, v in software.items()) + "."]
    lines += [
        "",
        "## Metrics",
        "",
        "Evaluated separately (finding recall, false findings on normal reports, side accuracy, Frechet distance);",
        "see BENCHMARKS.md. None are recorded here by the training run.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 3600:.2f} h)"


def _write_json_pretty(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2))
