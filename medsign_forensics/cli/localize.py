"""`medsign localize`: the pathology localization map A_loc of a report, for a generated or a given image.

Without ``--image`` the model generates the image from the report and the map comes from that denoising run;
with ``--image`` the map is read from the U-Net denoising the given image's noised latent (see
:mod:`medsign_forensics.localization.inversion`). Writes OUT (the map, 8-bit, value x 255 so 0.5 is grey 128),
OUT's stem + ``_overlay.png`` (the map in red over the image), OUT's stem + ``.npy`` (the float32 map) and, when
generating, OUT's stem + ``_image.png`` (the generated image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.errors import InputError

OVERLAY_ALPHA = 0.6


def output_paths(out: Path) -> dict[str, Path]:
    """Where each output goes, all beside OUT."""
    if out.suffix.lower() != ".png":
        raise InputError("--out must name a .png file (the map); the overlay and .npy are written beside it", path=out)
    stem = out.with_suffix("")
    return {
        "map": out,
        "overlay": stem.with_name(stem.name + "_overlay.png"),
        "array": out.with_suffix(".npy"),
        "image": stem.with_name(stem.name + "_image.png"),
    }


def overlay(image: np.ndarray, a_map: np.ndarray) -> np.ndarray:
    """RGB float image: the greyscale image tinted red in proportion to the min-max scaled map."""
    low, high = float(a_map.min()), float(a_map.max())
    weight = np.zeros_like(a_map) if high <= low else (a_map - low) / (high - low)
    weight = (OVERLAY_ALPHA * weight)[..., None]
    grey = np.repeat(image[..., None], 3, axis=-1)
    red = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    return np.clip((1 - weight) * grey + weight * red, 0, 1).astype(np.float32)


def parse_timesteps(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--timesteps must be comma-separated integers such as 50,100,200, got {text!r}") from None
    if not values:
        raise InputError("--timesteps needs at least one timestep")
    return values


def summary(result: Any, paths: dict[str, Path], extra: dict[str, Any]) -> dict[str, Any]:
    words = []
    for word in result.words:
        entry = {
            "word": word.tokens.word.text,
            "role": word.tokens.word.role.value,
            "kinds": sorted(kind.value for kind in word.tokens.word.kinds),
            "token_positions": list(word.tokens.positions),
            "salient_fraction": float(np.mean(word.a_loc > 0.5)),
        }
        if word.chosen is not None:
            entry["cas_token"] = word.tokens.positions[word.chosen]
            entry["clusters"] = [count.clusters for count in word.cluster_counts]
        words.append(entry)
    return {
        **extra,
        "normal": result.normal,
        "cas": result.options.cas,
        "aas": result.options.aas,
        "words": words,
        "dropped_words": [word.text for word in result.dropped],
        "salient_fraction": float(np.mean(result.a_loc > 0.5)),
        "outputs": {name: str(path) for name, path in paths.items()},
    }


def register(app: typer.Typer) -> None:
    @app.command("localize")
    @handle_errors
    def localize_command(
        report: Annotated[str, typer.Option("--report", help="The report text the map is made for.")],
        out: Annotated[Path, typer.Option(
            "--out", dir_okay=False, help="The map PNG; the overlay and .npy go beside it.")],
        image: Annotated[Path | None, typer.Option(
            "--image", dir_okay=False, help="Localise on this image instead of generating one.")] = None,
        model: Annotated[Path | None, typer.Option(
            "--model", file_okay=False, help="A local SD-1.x model folder; default: the shipped mini-cxr.")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the generation, or of the noise added to --image.")] = 0,
        steps: Annotated[int, typer.Option(help="Denoising steps when generating.")] = 25,
        guidance: Annotated[float | None, typer.Option(
            help="Guidance scale when generating; default: the sampler's.")] = None,
        timesteps: Annotated[str | None, typer.Option(
            help="With --image: the noise timesteps whose attention is summed; default 50,100,200.",
            show_default=False)] = None,
        no_cas: Annotated[bool, typer.Option(
            "--no-cas", help="Ablation: average a word's tokens instead of CAS.")] = False,
        no_aas: Annotated[bool, typer.Option("--no-aas", help="Ablation: min-max scaling instead of AAS.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Write the pathology localization map A_loc of REPORT (MedSign 2.2.1), its overlay and raw array."""
        from medsign_forensics.diffusion import load_model
        from medsign_forensics.diffusion.sampling import DEFAULT_GUIDANCE
        from medsign_forensics.fileio import save_npy, save_png
        from medsign_forensics.imageio import read_image, rgb_to_grey
        from medsign_forensics.localization import DEFAULT_TIMESTEPS, MapOptions, localize_image
        from medsign_forensics.localization.generation import generate_with_maps

        paths = output_paths(out)
        if not report.strip():
            raise InputError("--report is empty; give the report text to localise")
        options = MapOptions(cas=not no_cas, aas=not no_aas)
        loaded = load_model(model)
        extra: dict[str, Any] = {"model": loaded.name, "weights_sha256": loaded.weights_sha256, "seed": seed}
        if image is not None:
            chosen = DEFAULT_TIMESTEPS if timesteps is None else parse_timesteps(timesteps)
            pixels = read_image(image).pixels
            result = localize_image(loaded.pipeline, pixels, report, timesteps=chosen, seed=seed, options=options)
            extra.update(image=str(image), timesteps=list(chosen))
            del paths["image"]
        else:
            scale = DEFAULT_GUIDANCE if guidance is None else guidance
            generated = generate_with_maps(
                loaded, [report], seed=seed, steps=steps, guidance_scale=scale, options=options
            )
            result = generated.localizations[0]
            picture = generated.sample.images[0].numpy()  # type: ignore[index]
            pixels = picture[0] if picture.shape[0] == 1 else rgb_to_grey(np.moveaxis(picture[:3], 0, -1))
            extra.update(steps=steps, guidance_scale=scale)
            save_png(paths["image"], pixels)
        save_png(paths["map"], result.a_loc)
        save_png(paths["overlay"], overlay(pixels, result.a_loc))
        save_npy(paths["array"], result.a_loc)

        data = summary(result, paths, extra)
        if json_output:
            print_json(data)
            return
        if result.normal:
            console.print("No medical word in the report: the map is all zeros (nothing to protect).")
        for word in data["words"]:
            chosen_token = (
                f", CAS token {word['cas_token']} of {word['token_positions']}" if "cas_token" in word else ""
            )
            console.print(
                f"[bold]{word['word']}[/] ({word['role']}, {', '.join(word['kinds'])}){chosen_token}: "
                f"{word['salient_fraction']:.0%} of the image above 0.5",
                highlight=False,
            )
        if data["dropped_words"]:
            console.print(f"Cut off by the 77-token limit: {', '.join(data['dropped_words'])}", highlight=False)
        for name, path in data["outputs"].items():
            console.print(f"{name}: {path}", highlight=False)
