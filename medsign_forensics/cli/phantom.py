"""`medsign phantom`: render one report as a phantom radiograph; `medsign phantom dataset`: render many.

Library calls: :func:`medsign_forensics.phantom.render_report` and
:func:`medsign_forensics.phantom.dataset.build_dataset`. This module reads options and files, writes the
outputs atomically and renders the result as Rich tables or JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.errors import InputError, ReportError
from medsign_forensics.fileio import atomic_path, save_png
from medsign_forensics.phantom import PhantomStudy, render_report
from medsign_forensics.reports.findings import Finding

SPLITS = ("all", "train", "test")

phantom_app = typer.Typer(
    name="phantom",
    rich_markup_mode="rich",
    invoke_without_command=True,
    help="Render a report as a phantom chest radiograph with exact lesion masks; [bold]dataset[/] renders many.",
)

SizeOption = Annotated[int, typer.Option("--size", help="Image side in pixels: 256 or 512.")]


def read_report_file(path: Path) -> str:
    """The text of a report file, which must be UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("report file not found; check the path", path=path) from None
    except OSError as error:
        raise InputError(f"cannot read the report file: {error.strerror or error}", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ReportError(
            f"the report file is not UTF-8 text (byte {error.start}); convert it to UTF-8 and try again", path=path
        ) from None


def _status(finding: Finding) -> str:
    return "negated" if finding.negated else "uncertain" if finding.uncertain else "present"


def _write_outputs(study: PhantomStudy, out: Path, mask_out: Path | None, float_out: Path | None) -> None:
    try:
        save_png(out, study.image_u8)
        if mask_out is not None:
            save_png(mask_out, study.lesion_mask.astype(np.uint8) * 255)
        if float_out is not None:
            with atomic_path(float_out) as tmp, tmp.open("wb") as handle:
                np.save(handle, study.image)
    except OSError as error:
        raise InputError(f"cannot write the output: {error.strerror or error}", path=error.filename) from None


def _show(study: PhantomStudy, parsed: list[Finding], out: Path, mask_out: Path | None) -> None:
    if parsed:
        table = Table(title="Findings in the report", title_justify="left")
        for column in ("kind", "side", "zone", "severity", "status"):
            table.add_column(column)
        for f in parsed:
            table.add_row(f.kind.value, f.side.value, f.zone.value, f.severity.value, _status(f))
        console.print(table)
    if study.normal:
        why = "no finding is present (all negated or hedged)" if parsed else "no finding was recognised in the report"
        console.print(f"[bold]Normal chest[/]: {why}, so the phantom shows a normal chest and the mask is empty.")
    else:
        drawn = Table(title="Drawn (unspecified side, zone and severity filled in from the seed)", title_justify="left")
        for column in ("kind", "side", "zone", "severity", "mask pixels"):
            drawn.add_column(column)
        for f, mask in study.masks:
            drawn.add_row(f.kind.value, f.side.value, f.zone.value, f.severity.value, str(int(mask.sum())))
        console.print(drawn)
    console.print(f"image: {out}" + (f"   mask: {mask_out}" if mask_out else ""))


@phantom_app.callback()
@handle_errors
def phantom_command(
    ctx: typer.Context,
    report: Annotated[str | None, typer.Option("--report", help="Report text to render.")] = None,
    report_file: Annotated[
        Path | None, typer.Option("--report-file", dir_okay=False, help="UTF-8 file holding the report text.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Patient and acquisition seed.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", dir_okay=False, help="Output PNG (8-bit greyscale).")] = None,
    mask_out: Annotated[
        Path | None, typer.Option("--mask-out", dir_okay=False, help="Output PNG of the union lesion mask (0/255).")
    ] = None,
    size: SizeOption = 256,
    float_out: Annotated[
        Path | None, typer.Option("--float-out", dir_okay=False, help="Also save the float32 image as .npy.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of tables.")] = False,
) -> None:
    """Render a report as a phantom chest radiograph (PA view) and its lesion mask."""
    if ctx.invoked_subcommand is not None:
        return
    if report is not None and report_file is not None:
        raise InputError("give the report either as --report or as --report-file, not both")
    if report_file is not None:
        report = read_report_file(report_file)
    if report is None:
        raise InputError("no report given; pass --report \"...\" or --report-file FILE (or use `phantom dataset`)")
    if out is None:
        raise InputError("no output given; pass --out image.png")
    study, parsed = render_report(report, seed=seed, size=size)
    _write_outputs(study, out, mask_out, float_out)
    if json_output:
        print_json(
            {
                "image": str(out),
                "mask": None if mask_out is None else str(mask_out),
                "float": None if float_out is None else str(float_out),
                "normal": study.normal,
                "findings": [f.to_dict() for f in parsed],
                "drawn": [{**f.to_dict(), "mask_pixels": int(mask.sum())} for f, mask in study.masks],
                **{k: v for k, v in study.to_dict().items() if k in ("seed", "size", "anatomy")},
            }
        )
    else:
        _show(study, parsed, out, mask_out)


@phantom_app.command("dataset")
@handle_errors
def dataset_command(
    reports: Annotated[
        str,
        typer.Option("--reports", help="Report source: open-i, a report file (.txt/.csv/.jsonl) or a MIMIC folder."),
    ],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of phantoms.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Dataset folder (created; resumed if present).")],
    size: SizeOption = 256,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel worker processes.")] = 1,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Dataset seed: fixes every item's report and patient.")
    ] = 0,
    split: Annotated[
        str, typer.Option("--split", help="Which reports: all, or the project's fixed train / test split.")
    ] = "all",
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of text.")] = False,
) -> None:
    """Render many reports into images/, masks/ and captions.jsonl, in parallel; re-running resumes."""
    from medsign_forensics.phantom.dataset import build_dataset
    from medsign_forensics.reports import load_reports, split_reports

    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    loaded = load_reports(reports)
    chosen = list(loaded)
    if split != "all":
        train, test = split_reports(loaded)
        chosen = train if split == "train" else test
    # The bar starts with the first progress report, i.e. once the settings and the folder have been checked,
    # so bad input gives one error line and no empty bar.
    bar = Progress(
        TextColumn("[bold]phantoms"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    tasks: list[TaskID] = []

    def report(done: int, total: int) -> None:
        if not tasks:
            bar.start()
            tasks.append(bar.add_task("render", total=total))
        bar.update(tasks[0], completed=done, total=total)

    try:
        summary = build_dataset(
            chosen,
            out,
            n=n,
            size=size,
            seed=seed,
            workers=workers,
            source=reports,
            split=split,
            progress=None if json_output else report,
        )
    finally:
        if tasks:
            bar.stop()
    if json_output:
        print_json(summary.to_dict())
    else:
        console.print(
            f"{summary.total} phantoms in {summary.out_dir} ({summary.rendered} rendered now, {summary.skipped} "
            f"already there; {summary.normal} normal). Captions: {summary.out_dir / 'captions.jsonl'}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(phantom_app)
