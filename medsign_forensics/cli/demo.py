"""`medsign demo`: the main job end to end on the embedded defaults, for a new user on a fresh machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json

_STYLE = {"done": "green", "skipped": "yellow"}


@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output folder (created).")] = Path("medsign-demo"),
    reports: Annotated[int, typer.Option(min=1, max=20, help="Held-out Open-i reports to render.")] = 3,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the phantoms and of the generated study.")] = 0,
    deployment: Annotated[Path | None, typer.Option(help="Deployment folder (default: the shipped demo).")] = None,
    extractor: Annotated[Path | None, typer.Option(help="Extractor folder (default: the shipped one).")] = None,
    registry: Annotated[Path | None, typer.Option(help="Registry to copy (default: the demo registry).")] = None,
    real_image: Annotated[Path | None, typer.Option(help="A real radiograph to verify as well.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the whole toolkit once: phantom world, classifier, generate a DICOM study, verify it after handling.

    Steps whose trained weights are absent from this installation are reported as skipped, with the reason.
    Exit code 1 when the generated study, its PNG export or any of its ordinarily handled copies is not
    attributed (the optional --real-image must not be, and does not count).
    """
    from medsign_forensics.demo import run_demo

    result = run_demo(out, reports=reports, seed=seed, deployment=deployment, extractor=extractor,
                      registry=registry, real_image=real_image)
    if json:
        print_json(result.to_dict())
    else:
        for step in result.steps:
            body: RenderableType = step.detail
            if step.rows:
                table = Table(show_header=True, header_style="bold", expand=True)
                for column in step.rows[0]:
                    table.add_column(column, overflow="fold")
                for row in step.rows:
                    table.add_row(*(_cell(value) for value in row.values()))
                body = table
            title = f"[{_STYLE[step.status.value]}]{step.name}: {step.status.value}[/]"
            console.print(Panel(body, title=title, subtitle=step.detail if step.rows else None))
    verify = next(step for step in result.steps if step.name == "verify")
    if verify.status.value == "done":
        made = Path(result.out).resolve()
        own = [row for row in verify.rows if Path(str(row["file"])).resolve().parent == made]
        if any(row["verdict"] != "attributed" for row in own):
            raise typer.Exit(1)


def _cell(value: object) -> str:
    """Table text: p-values and other floats to 3 significant digits."""
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
