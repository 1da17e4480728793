"""`medsign base sample|info|train`: the base text-to-image model (mini-cxr or a local SD-1.x folder)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.cli.progress import rich_progress
from medsign_forensics.errors import InputError
from medsign_forensics.fileio import OPEN_MODE, save_npy, save_png


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="base",
        rich_markup_mode="rich",
        no_args_is_help=True,
        help="The base text-to-image model: sample an image from a report, or train mini-cxr.",
    )

    @group.command("sample")
    @handle_errors
    def sample_command(
        report: Annotated[str, typer.Option(help="Report text (FINDINGS/IMPRESSION) used as the prompt.")],
        out: Annotated[Path, typer.Option(help="PNG file to write (8-bit; greyscale for mini-cxr).")],
        model: Annotated[
            Path | None, typer.Option(help="Local SD-1.x folder; default: the shipped mini-cxr.")
        ] = None,
        seed: Annotated[int, typer.Option(help="Random seed of the initial noise.")] = 0,
        steps: Annotated[int, typer.Option(help="DPM-Solver++ steps.")] = 25,
        guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (<= 1: off).")] = 4.0,
        negative: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
        latents_out: Annotated[
            Path | None, typer.Option(help="Also write x0 (the latents the VAE decodes) as a (C, h, w) .npy file.")
        ] = None,
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
        json_output: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
    ) -> None:
        """Generate one image from a report and write it as PNG (and x0 as .npy)."""
        import numpy as np

        from medsign_forensics.diffusion import load_model, sample
        from medsign_forensics.diffusion.conditioning import condition

        if not report.strip():
            raise InputError("the report is empty; pass the report text with --report")
        if out.suffix.lower() != ".png":
            raise InputError("the output must be a .png file", path=out)
        if latents_out is not None and latents_out.suffix.lower() != ".npy":
            raise InputError("the latents output must be a .npy file", path=latents_out)
        loaded = load_model(model, device=device)
        start = time.perf_counter()
        given = condition(loaded, [report], seed)
        result = sample(loaded, list(given.prompts), seed=seed, steps=steps, guidance_scale=guidance,
                        negative_prompt=negative, layout=given.layout)
        seconds = time.perf_counter() - start
        assert result.images is not None and result.latents is not None
        _write_png(out, result.images[0].numpy())
        if latents_out is not None:
            save_npy(latents_out, result.latents[0].numpy().astype(np.float32), mode=OPEN_MODE)
        summary = {
            "out": str(out),
            "latents_out": None if latents_out is None else str(latents_out),
            "model": loaded.name,
            "model_path": str(loaded.path),
            "weights_sha256": loaded.weights_sha256,
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance,
            "scheduler": result.scheduler,
            "height": result.height,
            "width": result.width,
            "seconds": round(seconds, 3),
            "prompt": given.prompts[0],  # what the model was given for the report (its prompt form)
            "layout": given.layout is not None,
            "layout_guidance": result.layout_guidance,
        }
        if json_output:
            print_json(summary)
            return
        console.print(
            f"wrote [bold]{out}[/] ({result.width}x{result.height}, {loaded.name}, seed {seed}, {steps} steps, "
            f"guidance {guidance}) in {seconds:.1f} s",
            highlight=False,
        )
        if given.prompts[0] != report or given.layout is not None:
            layout = ", with the report's layout" if given.layout is not None else ""
            console.print(f"the model was given {given.prompts[0]!r}{layout}", highlight=False)
        if latents_out is not None:
            console.print(f"wrote x0 {tuple(result.latents.shape[1:])} to [bold]{latents_out}[/]", highlight=False)

    @group.command("info")
    @handle_errors
    def info_command(
        model: Annotated[
            Path | None, typer.Option(help="Base model folder (default: the shipped mini-cxr).")
        ] = None,
        json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Name, size and the combined weights SHA-256 that `medsign keys issue --weights-sha256` binds a key to."""
        from medsign_forensics.diffusion import load_model

        loaded = load_model(model)
        summary = {"model": loaded.name, "model_path": str(loaded.path), "weights_sha256": loaded.weights_sha256,
                   "image_size": loaded.image_size, "image_channels": loaded.image_channels}
        if json_output:
            print_json(summary)
            return
        console.print(f"{loaded.name} ({loaded.image_size}x{loaded.image_size}, {loaded.image_channels} channel(s)) "
                      f"at {loaded.path}\nweights SHA-256 {loaded.weights_sha256}", highlight=False)

    @group.command("train")
    @handle_errors
    def train_command(
        out: Annotated[Path, typer.Option(help="Run folder: checkpoints, logs, caches, and the exported model/.")],
        config: Annotated[str, typer.Option(help="default, tiny, or a JSON file of overrides.")] = "default",
        stage: Annotated[str, typer.Option(help="vae (stage A), unet (stage B: text encoder + U-Net) or all.")] = "all",
        steps: Annotated[int | None, typer.Option(help="Override the step count of each stage run.")] = None,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue the run in --out from its checkpoints.")
        ] = False,
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
        init_from: Annotated[
            Path | None,
            typer.Option(
                "--init-from",
                help="An exported model folder to continue stage B from (its text encoder, U-Net, VAE and "
                "tokenizer) instead of random weights; with --stage unet. Recorded in the model card.",
            ),
        ] = None,
        json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Train mini-cxr on phantoms of Open-i reports, from scratch or (--init-from) from an exported model;
        export OUT/model when stage B ends."""
        from medsign_forensics.diffusion.configs import load_config
        from medsign_forensics.diffusion.train_base import Stage, train

        if stage not in {s.value for s in Stage}:
            raise InputError(f"unknown stage {stage!r}; use vae, unet or all")
        # The command as a user would retype it, for the model card (argv is not this under test runners).
        command = ["medsign", "base", "train", "--config", config, "--out", str(out), "--stage", stage]
        command += (["--steps", str(steps)] if steps is not None else []) + (["--resume"] if resume else [])
        command += ["--device", device] + (["--init-from", str(init_from)] if init_from is not None else [])
        with rich_progress(not json_output) as progress:
            result = train(
                load_config(config),
                out,
                stage=stage,
                steps=steps,
                resume=resume,
                device=device,
                progress=progress,
                command=shlex.join(command),
                init_from=init_from,
            )
        stages = [
            {
                "stage": s.stage,
                "step": s.step,
                "target_steps": s.target_steps,
                "wall_time_s": round(s.wall_time_s, 1),
                "mean_loss": s.mean_loss,
            }
            for s in result.stages
        ]
        if json_output:
            print_json(
                {
                    "out": str(result.out_dir),
                    "model": None if result.model_dir is None else str(result.model_dir),
                    "stages": stages,
                }
            )
            return
        for s in stages:
            loss = "n/a" if s["mean_loss"] is None else f"{s['mean_loss']:.4f}"
            console.print(
                f"{s['stage']}: step {s['step']}/{s['target_steps']}, {s['wall_time_s']} s, mean loss {loss}",
                highlight=False,
            )
        if result.model_dir is not None:
            console.print(f"exported the model to [bold]{result.model_dir}[/]", highlight=False)

    app.add_typer(group)


def _write_png(path: Path, image) -> None:  # image: (C, H, W) float in [0, 1]
    save_png(path, image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), mode=OPEN_MODE)
