"""`medsign keys check`, `keys checkpoint` and `keys migrate`: the registry's append-only log.

``keys check`` exits 1 when any issuer, row, log entry, checkpoint or pin fails, and prints the reason on one
line (``TAMPERED: ...``); ``keys checkpoint`` exports (or signs) a checkpoint for auditors to pin; ``keys
migrate`` upgrades a schema-1 registry. Registered on ``keys_app`` by :func:`medsign_forensics.cli.keys.register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, print_json
from medsign_forensics.cli.keys import JsonOption, RegistryOption, load_issuer
from medsign_forensics.errors import InputError
from medsign_forensics.fileio import write_atomic
from medsign_forensics.provenance.checks import CheckReport
from medsign_forensics.provenance.keys import key_id_of, load_public_key_file
from medsign_forensics.provenance.log import CheckpointPin, checkpoint_file_bytes, load_checkpoint_file, parse_pin
from medsign_forensics.provenance.records import Checkpoint, SignatureError, verify
from medsign_forensics.provenance.registry import Registry


@handle_errors
def check_command(
    registry: RegistryOption,
    trust: Annotated[list[Path] | None, typer.Option(
        "--trust", exists=True, dir_okay=False,
        help="Pin trusted issuer public keys (PEM); repeatable. Default: the registry's own issuer keys.")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Pin a head hash you recorded earlier (HASH, or SIZE:HASH): fail if the log no "
                             "longer contains that state.")] = None,
    checkpoint_file: Annotated[Path | None, typer.Option(
        "--checkpoint-file", exists=True, dir_okay=False,
        help="Pin a signed checkpoint written by `keys checkpoint --out`.")] = None,
    allow_unanchored: Annotated[bool, typer.Option(
        "--allow-unanchored", help="Exit 0 (with a warning) when nothing is wrong but no signed checkpoint or pin "
                                   "vouches for the log, e.g. a registry migrated without its issuer key.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Verify issuer key ids, every row's signatures, the append-only log's hash chain, that the keys table
    equals the log, the signed checkpoints, and an optional pinned checkpoint. Exit 1 when any fails, with the
    reason on one line; also exit 1 when nothing signed or pinned vouches for the history (schema-1 registry,
    log without a signed checkpoint) unless --allow-unanchored."""
    trusted = None
    if trust:
        trusted = {key_id_of(key): key for key in (load_public_key_file(path) for path in trust)}
    if checkpoint is not None and checkpoint_file is not None:
        raise InputError("give --checkpoint HASH or --checkpoint-file FILE, not both")
    pin: CheckpointPin | None = None
    if checkpoint is not None:
        pin = parse_pin(checkpoint)
    elif checkpoint_file is not None:
        pin, _ = load_checkpoint_file(checkpoint_file)
    with Registry.open(registry) as opened:
        report = opened.check(trusted, pin=pin, require_anchor=not allow_unanchored)
    if json_output:
        print_json(report.to_dict())
    else:
        _render_check(report)
    if not report.ok:
        raise typer.Exit(1)


@handle_errors
def checkpoint_command(
    registry: RegistryOption,
    out: Annotated[Path | None, typer.Option("--out", dir_okay=False,
                                                help="Write the signed checkpoint file here.")] = None,
    issuer_key: Annotated[Path | None, typer.Option(
        "--issuer-key", dir_okay=False,
        help="Sign a fresh checkpoint over the current head with this issuer key (default: export the latest).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show the log head and export the latest signed checkpoint (or sign a new one with --issuer-key).

    Keep the file (or the head hash) somewhere the registry's writers cannot reach; later,
    `keys check --checkpoint-file FILE` fails if history was rewritten or rolled back relative to it."""
    issuer = load_issuer(issuer_key) if issuer_key is not None else None
    with Registry.open(registry) as opened:
        if issuer is not None:
            signed = opened.sign_checkpoint(issuer)
        else:
            size, head = opened.head()
            latest = opened.latest_checkpoint()
            if latest is None:
                raise InputError(f"this registry has no signed checkpoint (its log of {size} entries was built "
                                 f"without the issuer key); pin its head with `keys check --checkpoint {size}:{head}`"
                                 ", or sign one with `keys checkpoint --issuer-key KEY`", path=registry)
            signed = latest
        keys = opened.public_keys()
        try:
            document = verify(signed, keys, Checkpoint)
        except SignatureError as error:
            raise InputError(f"the registry's latest checkpoint does not verify ({error}); run `keys check`",
                             path=registry) from None
        pem = next(held.public_key_pem for held in opened.issuers() if held.key_id == document.key_id)
        size, head = opened.head()
    if out is not None:
        write_atomic(out, checkpoint_file_bytes(signed, pem))
    result = {"registry": str(registry), "log_size": size, "head_hash": head,
              "checkpoint": {"log_size": document.log_size, "head_hash": document.head_hash,
                             "key_id": document.key_id, "created_at": document.created_at},
              "signed_now": issuer is not None, "out": None if out is None else str(out)}
    if json_output:
        print_json(result)
        return
    console.print(f"log: {size} entries, head {head}")
    console.print(f"signed checkpoint: {document.log_size} entries, head {document.head_hash}, key "
                  f"{document.key_id[:16]}..., {document.created_at}")
    if out is not None:
        console.print(f"[green]Wrote[/] {out}; pin it with `medsign keys check --checkpoint-file {out}`")


@handle_errors
def migrate_command(
    registry: RegistryOption,
    issuer_key: Annotated[Path | None, typer.Option(
        "--issuer-key", dir_okay=False,
        help="Issuer key that signs the first checkpoint. Without it the log is built but left unsigned.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Upgrade a schema-1 registry: build the append-only log from its existing signed records and revocations
    (each verified first; nothing is re-signed) and, with --issuer-key, sign a first checkpoint."""
    issuer = load_issuer(issuer_key) if issuer_key is not None else None
    with Registry.open(registry) as opened:
        result = opened.migrate(issuer)
    if json_output:
        print_json(result.to_dict())
        return
    what = "migrated from schema version 1" if result.from_version < 2 else "already at the current schema"
    console.print(f"[green]{registry}[/]: {what}; log of {result.log_size} entries, head {result.head_hash}",
                  soft_wrap=True)
    if result.checkpoint is not None:
        console.print("signed a checkpoint over the head")
    elif issuer is None:
        console.print("[yellow]no checkpoint signed[/] (no --issuer-key): `keys check` will say the log is "
                      f"unanchored; pin it with --checkpoint {result.log_size}:{result.head_hash}", soft_wrap=True)


def _render_check(report: CheckReport) -> None:
    if report.reason is not None:
        console.print(f"[red]{'TAMPERED' if report.tampered else 'UNANCHORED'}:[/] {report.reason}", soft_wrap=True)
    for problem in report.issuer_problems:
        console.print(f"[red]issuer problem:[/] {problem}")
    if report.failed_rows:
        table = Table(title=f"{len(report.failed_rows)} row(s) FAILED")
        table.add_column("provenance ID")
        table.add_column("problems", overflow="fold")
        for row in report.failed_rows:
            table.add_row(row.provenance_id, "; ".join(row.problems))
        console.print(table)
    for problem in report.log_problems[1:]:
        console.print(f"[red]log problem:[/] {problem}", soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if report.log is not None:
        log = report.log
        signed = ("no signed checkpoint" if log.checkpoint_size is None else
                  f"signed checkpoint at size {log.checkpoint_size} by key {str(log.checkpoint_key_id)[:16]}...")
        pinned = "" if log.pin is None else f", pinned {log.pin.source}"
        console.print(f"log: {log.size} entries, head {log.head_hash}, {signed}{pinned}", soft_wrap=True)
    if report.tampered:
        status = "[red]TAMPERED[/]"
    elif not report.ok:
        status = "[red]UNANCHORED[/] (no tampering seen, but nothing signed or pinned vouches for the history)"
    elif report.anchored or (report.log is not None and report.log.size == 0):
        status = "[green]clean[/]"
    else:
        status = "[yellow]clean but UNANCHORED[/] (--allow-unanchored)"
    console.print(f"{report.folder}: {report.issuers_checked} issuer key(s), {len(report.rows)} row(s) checked: "
                  f"{status}", soft_wrap=True)


def register_log_commands(keys_app: typer.Typer) -> None:
    """Add check, checkpoint and migrate to `medsign keys`."""
    keys_app.command("check")(check_command)
    keys_app.command("checkpoint")(checkpoint_command)
    keys_app.command("migrate")(migrate_command)
