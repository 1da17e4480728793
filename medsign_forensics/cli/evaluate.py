"""`medsign evaluate`: MedSign against Stable Signature mode, ablations and post-generation baselines on the
same held-out reports, seeds and latents; writes evaluation.md, evaluation.json and fig3.png into --out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.cli.progress import rich_progress
from medsign_forensics.errors import InputError


def parse_baselines(text: str) -> tuple[str, ...]:
    """``dwtdct,rivagan`` -> names; ``none`` or an empty string -> no baselines."""
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    return () if names in ((), ("none",)) else names


def _summary_table(data: dict[str, Any]) -> Table:
    jpeg = "jpeg_q50"
    table = Table(title=f"medsign evaluate: {data['reports']['items']} held-out reports")
    for column in ("method", "PSNR", "SSIM", "bit acc (avg)", "bit acc JPEG 50", "TPR JPEG 50", "conf. change (pp)"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method in data["methods"]:
        confidence = method["confidence"]
        table.add_row(
            method["name"],
            "-" if method["psnr"]["mean"] is None else f"{method['psnr']['mean']:.2f}",
            "-" if method["ssim"]["mean"] is None else f"{method['ssim']['mean']:.3f}",
            f"{method['bit_accuracy_avg']:.3f}",
            f"{method['bit_accuracy'][jpeg]:.3f}",
            "-" if method["detection"][jpeg]["rate"] is None else f"{method['detection'][jpeg]['rate']:.2f}",
            "-" if confidence is None or confidence["avg"] is None else f"{confidence['avg']:.2f}",
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    @handle_errors
    def evaluate_command(
        deployment: Annotated[Path, typer.Option(help="The MedSign deployment folder to evaluate.")],
        out: Annotated[Path, typer.Option(help="Output folder: evaluation.md, evaluation.json, fig3.png, cache/.")],
        n: Annotated[int, typer.Option("--n", help="Held-out reports (images) to evaluate on.")] = 50,
        stable_signature: Annotated[
            Path | None, typer.Option(help="A deployment trained with --ablation stable-signature, for comparison.")
        ] = None,
        ablations: Annotated[
            list[Path] | None,
            typer.Option("--ablations", help="Ablation deployment folder (repeat the option for several)."),
        ] = None,
        baselines: Annotated[
            str, typer.Option(help="Post-generation baselines: comma-separated dwtdct,rivagan, or 'none'.")
        ] = "dwtdct,rivagan",
        real_data: Annotated[
            Path | None,
            typer.Option(
                help="Folder of real radiographs for the false-positive rate (default: ../shared/data if present)."
            ),
        ] = None,
        no_real_data: Annotated[
            bool, typer.Option("--no-real-data", help="Skip the real-radiograph false positives.")
        ] = False,
        real_max: Annotated[int | None, typer.Option(help="Read at most this many real images.")] = None,
        reports: Annotated[
            str | None, typer.Option(help="Report source whose held-out split is used (default: the deployment's).")
        ] = None,
        model: Annotated[
            Path | None, typer.Option(help="Base model folder, when not where the deployment says.")
        ] = None,
        extractor: Annotated[
            Path | None, typer.Option(help="Extractor folder, when not where the deployment says.")
        ] = None,
        classifier: Annotated[
            Path | None, typer.Option(help="Finding classifier folder (default: the installed one).")
        ] = None,
        cache: Annotated[Path | None, typer.Option(help="Latent cache folder to (re)use (default: OUT/cache).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the held-out subset and its sampling seeds.")] = 0,
        fpr: Annotated[float, typer.Option(help="Target false-positive rate of detection.")] = 1e-6,
        device: Annotated[str, typer.Option(help="torch device: cpu or cuda.")] = "cpu",
        latent: Annotated[bool | None, typer.Option(
            "--latent/--no-latent", help="Rows Gaussian Shading and MedSign + Gaussian Shading (the latent layer) "
                                         "[default: when the deployment carries the latent layer].",
            show_default=False)] = None,
        json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary, no progress bars.")] = False,
    ) -> None:
        """Evaluate a deployment: Table 1, detection, false positives, Table 2, ablations and Fig. 3."""
        from medsign_forensics.evaluate import EvaluationConfig, default_real_data, evaluate

        if real_data is not None and no_real_data:
            raise InputError("give either --real-data DIR or --no-real-data, not both")
        if real_data is not None and not real_data.is_dir():
            raise InputError("--real-data must be an existing folder of images", path=real_data)
        real = None if no_real_data else (real_data if real_data is not None else default_real_data())
        config = EvaluationConfig(
            n=n, reports=reports, seed=seed, baselines=parse_baselines(baselines), fpr=fpr, real_data=real,
            real_max=real_max, device=device, latent=latent,
        )
        with rich_progress(not json_output) as progress:
            result = evaluate(
                config, deployment=deployment, out_dir=out, stable_signature=stable_signature,
                ablations=ablations or (), model_path=model, extractor=extractor, classifier=classifier,
                cache_dir=cache, progress=progress,
            )
        paths = {"markdown": str(result.markdown), "json": str(result.json), "figure": str(result.figure)}
        if json_output:
            methods = {
                m["name"]: {
                    "psnr": m["psnr"]["mean"], "ssim": m["ssim"]["mean"], "bit_accuracy_avg": m["bit_accuracy_avg"],
                    "bit_accuracy": m["bit_accuracy"],
                    "confidence_avg": None if m["confidence"] is None else m["confidence"]["avg"],
                }
                for m in result.data["methods"]
            }
            print_json(
                {**paths, "items": result.data["reports"]["items"], "methods": methods, "notes": result.data["notes"]}
            )
            return
        console.print(_summary_table(result.data))
        for note in result.data["notes"]:
            console.print(f"[yellow]note:[/] {note}")
        console.print(f"Wrote {paths['markdown']}, {paths['json']} and {paths['figure']}")
