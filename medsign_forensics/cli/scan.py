"""`medsign scan PATH | --pacs URL`: verify a folder tree or a whole PACS, in parallel, into JSONL/CSV reports.

Where the files are verified: `--workers N` processes on this machine (the default engine), or a Dask cluster
(`--cluster tcp://scheduler:8786`, or `--engine dask` for a local one of `--dask-workers N` processes; needs
`pip install medsign-forensics[cluster]`). Reports, resuming, progress and the summary are the same for both.

Exit codes are those of `medsign verify` over all files: 0 no alarm and every file analysed; 1 at least one
tampered, mismatch or revoked file; 2 no alarm but some files could not be analysed (each is in the report
with its error), or an option is invalid, the PACS cannot be used, or the Dask cluster cannot be used or its
scheduler went away (the JSONL report is then resumable with --resume); 4 extractor unusable; 5 registry cannot
be opened.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medsign_forensics.cli.common import console, err_console, handle_errors, print_json
from medsign_forensics.cli.verify import (
    ExtractorOption,
    InversionStepsOption,
    LayersOption,
    ModelOption,
    PolicyOption,
    RegistryOption,
    ScalingOption,
    TrustOption,
    exit_code,
    render_counts,
)
from medsign_forensics.errors import InputError
from medsign_forensics.pacs import PacsApi, pacs_config
from medsign_forensics.reading import Scaling
from medsign_forensics.scan import ScanSummary, VerifierSettings, scan_folder, scan_pacs
from medsign_forensics.verify import VerdictKind

if TYPE_CHECKING:
    from medsign_forensics.cluster import DaskEngine

MAX_LISTED = 20


class ScanEngine(str, Enum):
    LOCAL = "local"
    DASK = "dask"


def register(app: typer.Typer) -> None:
    @app.command("scan")
    @handle_errors
    def scan_command(
        path: Annotated[Path | None, typer.Argument(help="Folder (scanned recursively) or file.",
                                                       show_default=False)] = None,
        pacs: Annotated[str | None, typer.Option(
            "--pacs", help="Scan a PACS instead: Orthanc REST base URL (http://host:8042) or a DICOMweb root "
                           "(.../dicom-web). Credentials may be given as user:password@host.")] = None,
        out: Annotated[Path | None, typer.Option("--out", dir_okay=False, help="Write a CSV report here.")] = None,
        jsonl: Annotated[Path | None, typer.Option(
            "--jsonl", dir_okay=False, help="Write one JSON line per file here as the scan goes (needed by --resume).")
        ] = None,
        workers: Annotated[int, typer.Option(
            "--workers", min=1, help="Worker processes, each with one torch thread (1: in this process). More "
                                     "help only on idle cores; see benchmarks/results/scan_speed.md.")] = 1,
        resume: Annotated[bool, typer.Option(
            "--resume", help="Continue the scan recorded in --jsonl: skip files whose size and time are unchanged.")
        ] = False,
        pacs_user: Annotated[str | None, typer.Option("--pacs-user", help="PACS user (basic auth).")] = None,
        pacs_password: Annotated[str | None, typer.Option(
            "--pacs-password", envvar="MEDSIGN_PACS_PASSWORD", help="PACS password (or MEDSIGN_PACS_PASSWORD).")
        ] = None,
        pacs_api: Annotated[PacsApi, typer.Option(
            "--pacs-api", help="auto: DICOMweb when the URL ends in /dicom-web, else Orthanc REST.")] = PacsApi.AUTO,
        json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
        engine: Annotated[ScanEngine | None, typer.Option(
            "--engine", help="local: --workers processes on this machine (default). dask: a Dask cluster, "
                             "--cluster or a local one (pip install medsign-forensics\\[cluster]).",
            show_default=False)] = None,
        cluster: Annotated[str | None, typer.Option(
            "--cluster", help="Verify on the Dask cluster whose scheduler is here, e.g. tcp://scheduler:8786 "
                              "(implies --engine dask). Workers must see the files, registry and extractor at "
                              "the same paths.", show_default=False)] = None,
        dask_workers: Annotated[int | None, typer.Option(
            "--dask-workers", min=1, help="--engine dask without --cluster: worker processes of the local Dask "
                                          "cluster, one thread each \\[default: one per CPU core].",
            show_default=False)] = None,
        files_per_task: Annotated[int, typer.Option(
            "--files-per-task", min=1, help="Dask engine: files per Dask task (raise it on a large cluster: the "
                                            "scheduler spends 1-2 ms per task).")] = 1,
        policy: PolicyOption = None,
        registry: RegistryOption = None,
        extractor: ExtractorOption = None,
        trust: TrustOption = None,
        scaling: ScalingOption = Scaling.AUTO,
        layers: LayersOption = "decoder",
        model: ModelOption = None,
        inversion_steps: InversionStepsOption = None,
    ) -> None:
        """Verify every file under a folder, or every instance in a PACS, and report each verdict.

        A file that cannot be read is recorded with its error and the scan goes on. Runs on this machine
        (--workers) or on a Dask cluster (--cluster ADDRESS, or --engine dask for a local one). Exit codes as for
        `medsign verify`: 0 no alarm; 1 an alarm; 2 files that could not be read (or bad options, or the Dask
        cluster cannot be used or went away: --resume continues).
        """
        if (path is None) == (pacs is None):
            raise InputError("give either a folder or file to scan, or --pacs URL (not both)")
        chosen = _engine(engine, cluster=cluster, dask_workers=dask_workers, files_per_task=files_per_task,
                         workers=workers)
        settings = VerifierSettings(registry=registry, extractor=extractor, policy=policy,
                                    trust=tuple(trust or ()), scaling=scaling,
                                    layers=tuple(layers.split(",")), model=model, inversion_steps=inversion_steps)
        settings.open().close()  # fail fast (one clear line) on a bad extractor, registry or policy
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[last]}"), TimeRemainingColumn(), console=err_console,
                      transient=True, disable=json_output) as progress:
            task = progress.add_task("scanning" if chosen is None else f"scanning on {chosen.label}", total=None,
                                     last="")

            def on_total(total: int) -> None:
                progress.update(task, total=total)

            def on_verdict(record: dict[str, Any]) -> None:
                progress.update(task, advance=1, last=record["verdict"])

            kwargs: dict[str, Any] = dict(settings=settings, workers=workers, jsonl=jsonl, csv_path=out,
                          resume=resume, on_total=on_total, on_verdict=on_verdict, engine=chosen)
            if pacs is not None:
                summary = scan_pacs(pacs_config(pacs, username=pacs_user, password=pacs_password, api=pacs_api),
                                    **kwargs)
            else:
                assert path is not None
                summary = scan_folder(path, **kwargs)
        if json_output:
            print_json(summary.to_dict())
        else:
            _render(summary)
        raise typer.Exit(exit_code(VerdictKind(kind) for kind, n in summary.counts.items() if n))


def _engine(engine: ScanEngine | None, *, cluster: str | None, dask_workers: int | None, files_per_task: int,
            workers: int) -> DaskEngine | None:
    """The Dask engine the options ask for (None: the local engine with --workers)."""
    if engine is None:
        engine = ScanEngine.DASK if cluster is not None else ScanEngine.LOCAL
    if engine is ScanEngine.LOCAL:
        if cluster is not None or dask_workers is not None or files_per_task != 1:
            raise InputError("--cluster, --dask-workers and --files-per-task are for --engine dask")
        return None
    if workers != 1:
        raise InputError("--workers is for the local engine; with --engine dask give --dask-workers (a local "
                         "cluster) or --cluster ADDRESS")
    if cluster is not None and dask_workers is not None:
        raise InputError("--dask-workers sizes a local Dask cluster; the cluster at --cluster has its own workers")
    from medsign_forensics.cluster import DaskEngine, default_workers

    return DaskEngine(address=cluster, workers=dask_workers or default_workers(), files_per_task=files_per_task)


def _render(summary: ScanSummary) -> None:
    console.print(render_counts(Counter(summary.counts)))
    resumed = f", {summary.resumed} taken from the earlier report" if summary.resumed else ""
    console.print(f"{summary.scanned} file(s) verified in {summary.seconds:.1f} s ({summary.rate:.1f}/s){resumed}.")
    for title, records, field in (("Alarms", summary.alarms, "verdict"), ("Unreadable", summary.errors, "error")):
        if not records:
            continue
        table = Table(title=f"{title} ({len(records)})", show_edge=False)
        table.add_column("file", overflow="fold")
        table.add_column(field, overflow="fold")
        for record in records[:MAX_LISTED]:
            table.add_row(record["file"], _without_file(record[field] or "", record["file"]))
        if len(records) > MAX_LISTED:
            table.add_row(f"... {len(records) - MAX_LISTED} more in the report", "")
        console.print(table)
    for label, target in (("JSONL", summary.jsonl), ("CSV", summary.csv)):
        if target is not None:
            console.print(f"{label} report: {target}")


def _without_file(message: str, file: str) -> str:
    prefix = f"{file}: "
    return message[len(prefix):] if message.startswith(prefix) else message
