"""`medsign keys ...`: issuer keys and the key registry (init, issue, add-latent, add-binding, list, show,
revoke, export-public; the log commands check, checkpoint and migrate are in
:mod:`medsign_forensics.cli.keys_log`).

Each command is one library call in :mod:`medsign_forensics.provenance`; this module parses options, gets the
passphrase (MEDSIGN_PASSPHRASE or a hidden prompt on the terminal) and renders the result as a Rich table or,
with ``--json``, as JSON on stdout.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from medsign_forensics.cli.common import console, handle_errors, passphrase_prompt, print_json
from medsign_forensics.errors import InputError
from medsign_forensics.fileio import sha256_file, write_atomic
from medsign_forensics.provenance.entries import KeyStatus, RegistryEntry
from medsign_forensics.provenance.keys import (
    IssuerKey,
    create_issuer_key,
    load_issuer_key,
)
from medsign_forensics.provenance.layers import BINDING_SECRET_BYTES, add_binding
from medsign_forensics.provenance.policy import load_policy
from medsign_forensics.provenance.records import ModelInfo
from medsign_forensics.provenance.registry import Registry
from medsign_forensics.verify import LATENT_LAYER, check_layers

keys_app = typer.Typer(
    name="keys",
    rich_markup_mode="rich",
    no_args_is_help=True,
    help="Issuer keys and the key registry: issue, list, revoke and check deployment keys.",
)

RegistryOption = Annotated[Path, typer.Option("--registry", envvar="MEDSIGN_REGISTRY", file_okay=False,
                                              help="Registry folder (holds registry.sqlite).")]
IssuerKeyOption = Annotated[Path, typer.Option("--issuer-key", envvar="MEDSIGN_ISSUER_KEY", dir_okay=False,
                                               help="Encrypted issuer key file (from `keys init`).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of tables.")]
DeploymentOption = Annotated[Path | None, typer.Option(
    "--deployment", file_okay=False, help="Also give this deployment folder (which holds the key) the secret, so "
                                          "that `medsign generate` uses it.")]
BaseModelOption = Annotated[Path | None, typer.Option(
    "--base-model", file_okay=False, help="Diffusion model folder whose initial noise carries the latent layer; "
                                          "default: the shipped mini-cxr.")]


def load_issuer(path: Path) -> IssuerKey:
    return load_issuer_key(path, passphrase_prompt())


@keys_app.command("init")
@handle_errors
def init_command(
    issuer_key: Annotated[Path | None, typer.Option("--issuer-key", dir_okay=False,
                                                       help="Create a new encrypted issuer key here.")] = None,
    registry: Annotated[Path | None, typer.Option("--registry", file_okay=False,
                                                     help="Create (or open) a registry in this folder.")] = None,
    name: Annotated[str, typer.Option("--name", help="Issuer name written into every record.")] = "",
    json_output: JsonOption = False,
) -> None:
    """Create an issuer key (Ed25519, scrypt + AES-256-GCM, mode 0600) and/or a registry.

    With both options the issuer's public key is registered in the registry. The passphrase comes from
    MEDSIGN_PASSPHRASE or a prompt.
    """
    if issuer_key is None and registry is None:
        raise InputError("give --issuer-key FILE to create an issuer key, --registry DIR to create a "
                         "registry, or both")
    result: dict[str, Any] = {}
    key = None
    if issuer_key is not None:
        if not name.strip():
            raise InputError("--name is required with --issuer-key: the issuer name goes into every record")
        if issuer_key.exists():
            raise InputError("an issuer key already exists here; refusing to overwrite it", path=issuer_key)
        key = create_issuer_key(issuer_key, passphrase_prompt(new=True), name=name)
        result.update(issuer_key=str(issuer_key), key_id=key.key_id, name=key.name)
    if registry is not None:
        with Registry.open(registry, create=True) as opened:
            if key is not None:
                opened.add_issuer(key.public_key, key.name)
            result.update(registry=str(registry), schema_version=opened.schema_version,
                          issuers=len(opened.issuers()))
    if json_output:
        print_json(result)
        return
    if key is not None:
        console.print(f"[green]Created issuer key[/] {issuer_key} (mode 0600) for [bold]{key.name}[/]")
        console.print(f"key id {key.key_id}")
        console.print("Keep the file and its passphrase safe; `medsign keys export-public` gives the public key.")
    if registry is not None:
        console.print(f"[green]Registry ready[/] at {registry} ({result['issuers']} issuer key(s))")


@keys_app.command("issue")
@handle_errors
def issue_command(
    registry: RegistryOption,
    issuer_key: IssuerKeyOption,
    deployment: Annotated[str, typer.Option("--deployment", help="Deployment name, e.g. 'site-a-cxr'.")],
    model_name: Annotated[str, typer.Option("--model-name", help="Generator name, e.g. 'mini-cxr'.")],
    model_version: Annotated[str, typer.Option("--model-version", help="Generator version.")],
    weights_sha256: Annotated[str | None, typer.Option(
        "--weights-sha256", help="SHA-256 (hex) of the deployment's watermarked weights.")] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", exists=True, dir_okay=False, help="Weights file to hash instead of --weights-sha256.")] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", help="Policy name (default, strict) or TOML file: sets the minimum key distance.")] = None,
    bits: Annotated[int | None, typer.Option("--bits", help="Key length (default: the policy's).")] = None,
    layers: Annotated[str, typer.Option(
        "--layers", help="Watermark layers the key is for: decoder, or decoder,latent (also a latent-layer secret "
                         "in the initial noise of --base-model).")] = "decoder",
    base_model: BaseModelOption = None,
    json_output: JsonOption = False,
) -> None:
    """Issue a new key for a deployment: a random k-bit key at least the policy's minimum Hamming distance
    from every registered key, a fresh provenance ID, a record signed by the issuer key, and the secret that
    binds the decoder layer's mark to each image (verify attributes a spectral match only when it holds)."""
    digest = _weights_digest(weights_sha256, weights)
    model = ModelInfo(name=model_name, version=model_version, weights_sha256=digest)
    loaded_policy = load_policy(policy)
    wanted = check_layers(layers.split(","))
    base_sha = _base_sha256(base_model) if LATENT_LAYER in wanted else None
    issuer = load_issuer(issuer_key)
    with Registry.open(registry) as opened:
        entry = opened.issue(issuer, model=model, deployment=deployment, policy=loaded_policy, bits=bits)
        if base_sha is not None:
            _add_latent(opened, entry.provenance_id, base_sha)
    if json_output:
        print_json({**entry.to_dict(), "layers": list(wanted)})
        return
    console.print(f"[green]Issued[/] {entry.provenance_id}  key {entry.key_hex} ({entry.bits} bits), layers "
                  f"{', '.join(wanted)}")
    console.print(f"deployment {deployment}, model {model_name} {model_version}, policy {loaded_policy.name} "
                  f"(min distance {loaded_policy.min_hamming_distance})")


@keys_app.command("add-latent")
@handle_errors
def add_latent_command(
    provenance_id: Annotated[str, typer.Argument(help="Provenance ID of an issued key.")],
    registry: RegistryOption,
    base_model: BaseModelOption = None,
    deployment: DeploymentOption = None,
    json_output: JsonOption = False,
) -> None:
    """Give an issued key a latent layer: a fresh keystream secret for the initial noise of --base-model, stored
    in the registry (verifiers need it) and, with --deployment, in the deployment folder. A key keeps its secret
    for life: a second call is refused."""
    from medsign_forensics.provenance.layers import latent_layers
    from medsign_forensics.watermark.deployment import add_latent_to_deployment

    base_sha = _base_sha256(base_model)
    with Registry.open(registry) as opened:
        entry = opened.get(provenance_id)
        _add_latent(opened, entry.provenance_id, base_sha)
        layer = latent_layers(opened)[entry.provenance_id]
    if deployment is not None:
        add_latent_to_deployment(deployment, layer)
    if json_output:
        print_json({"provenance_id": entry.provenance_id, "layers": ["decoder", "latent"],
                    "base_weights_sha256": base_sha, "deployment": None if deployment is None else str(deployment)})
        return
    where = f" and deployment {deployment}" if deployment is not None else ""
    console.print(f"[green]Latent layer added[/] to {entry.provenance_id} (base model {base_sha[:16]}...) in the "
                  f"registry{where}")


@keys_app.command("add-binding")
@handle_errors
def add_binding_command(
    provenance_id: Annotated[str, typer.Argument(help="Provenance ID of an issued key.")],
    registry: RegistryOption,
    deployment: DeploymentOption = None,
    json_output: JsonOption = False,
) -> None:
    """Give a key issued before content binding its binding secret (keys issued now get one); without it the
    key's spectral matches are at most inconclusive. Images made before it carry an unbound mark and will not
    attribute. A key keeps its secret for life: a second call is refused."""
    from medsign_forensics.watermark.deployment import add_binding_to_deployment

    secret = secrets.token_bytes(BINDING_SECRET_BYTES)
    with Registry.open(registry) as opened:
        entry = opened.get(provenance_id)
        add_binding(opened, entry.provenance_id, secret=secret)
    if deployment is not None:
        add_binding_to_deployment(deployment, entry.provenance_id, secret)
    if json_output:
        print_json({"provenance_id": entry.provenance_id, "binding": True,
                    "deployment": None if deployment is None else str(deployment)})
        return
    where = f" and deployment {deployment}" if deployment is not None else ""
    console.print(f"[green]Binding secret added[/] to {entry.provenance_id} in the registry{where}")


def _base_sha256(base_model: Path | None) -> str:
    """The combined weights digest of the base model the latent layer is read with (hashes, does not load it)."""
    from medsign_forensics.diffusion.loader import weights_digest

    return weights_digest(base_model)


def _add_latent(registry: Registry, provenance_id: str, base_sha: str) -> None:
    from medsign_forensics.provenance.layers import add_latent_layer
    from medsign_forensics.watermark.latent import ISSUED_CONFIG, new_secret

    add_latent_layer(registry, provenance_id, secret=new_secret(), config=ISSUED_CONFIG.to_dict(),
                     base_weights_sha256=base_sha)


def _weights_digest(weights_sha256: str | None, weights: Path | None) -> str:
    if (weights_sha256 is None) == (weights is None):
        raise InputError("give exactly one of --weights-sha256 HEX or --weights FILE")
    if weights is not None:
        return sha256_file(weights)
    assert weights_sha256 is not None
    return weights_sha256.strip().lower()


@keys_app.command("list")
@handle_errors
def list_command(
    registry: RegistryOption,
    status: Annotated[KeyStatus | None, typer.Option("--status", help="Only active or only revoked.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List the registry's deployments (signatures are not checked here; use `keys check`)."""
    with Registry.open(registry) as opened:
        entries = opened.entries(status=status)
    if json_output:
        print_json([_summary(entry) for entry in entries])
        return
    narrow = console.width < 110  # an 80-column terminal: no bits column, dates without time, no outer box
    table = Table(title=f"{len(entries)} deployment key(s) in {registry}", box=None if narrow else box.HEAVY_HEAD,
                  padding=(0, 1))
    columns = ("provenance ID", "key", "status", "deployment", "model", "created") if narrow else \
        ("provenance ID", "key", "bits", "status", "deployment", "model", "created (UTC)")
    for column in columns:
        table.add_column(column, no_wrap=column in ("provenance ID", "key", "status", "created"))
    for entry in entries:
        row = _summary(entry)
        colour = "green" if entry.status is KeyStatus.ACTIVE else "red"
        cells = {"provenance ID": row["provenance_id"], "key": row["key_hex"], "bits": str(row["bits"]),
                 "status": f"[{colour}]{row['status']}[/]", "deployment": row["deployment"], "model": row["model"],
                 "created": row["created_at"][:10], "created (UTC)": row["created_at"]}
        table.add_row(*(cells[column] for column in columns))
    console.print(table)


def _summary(entry: RegistryEntry) -> dict[str, Any]:
    try:
        record = entry.claimed_record()
        deployment, model = record.deployment, f"{record.model.name} {record.model.version}"
    except InputError:
        deployment, model = "(unreadable record)", "(unreadable record)"
    return {"provenance_id": entry.provenance_id, "key_hex": entry.key_hex, "bits": entry.bits,
            "status": entry.status.value, "deployment": deployment, "model": model, "created_at": entry.created_at}


@keys_app.command("show")
@handle_errors
def show_command(
    identifier: Annotated[str, typer.Argument(help="Provenance ID (msp-...) or full key in hex.")],
    registry: RegistryOption,
    json_output: JsonOption = False,
) -> None:
    """Show one deployment's record and whether its signatures verify."""
    with Registry.open(registry) as opened:
        entry = opened.get(identifier)
        report = opened.check_entry(entry)
    data = entry.to_dict()
    data["signature_valid"] = report.ok
    data["problems"] = list(report.problems)
    if json_output:
        print_json(data)
        return
    table = Table(title=entry.provenance_id, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field in ("provenance_id", "key_hex", "bits", "status", "issuer_key_id", "created_at", "record",
                  "signature", "revocation"):
        table.add_row(field, str(data[field]))
    verdict = "[green]valid[/]" if report.ok else "[red]INVALID[/]: " + "; ".join(report.problems)
    table.add_row("signatures", verdict)
    console.print(table)


@keys_app.command("revoke")
@handle_errors
def revoke_command(
    identifier: Annotated[str, typer.Argument(help="Provenance ID (msp-...) or full key in hex.")],
    registry: RegistryOption,
    issuer_key: IssuerKeyOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the signed revocation).")],
    json_output: JsonOption = False,
) -> None:
    """Revoke a deployment with a revocation signed by its issuer; verification then reports `revoked`."""
    issuer = load_issuer(issuer_key)
    with Registry.open(registry) as opened:
        entry = opened.revoke(identifier, issuer, reason=reason)
    if json_output:
        print_json(entry.to_dict())
        return
    console.print(f"[red]Revoked[/] {entry.provenance_id} (key {entry.key_hex}): {reason}")


@keys_app.command("export-public")
@handle_errors
def export_public_command(
    issuer_key: IssuerKeyOption,
    out: Annotated[Path | None, typer.Option("--out", dir_okay=False,
                                                help="Write the PEM here instead of stdout.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Print (or write) the issuer's PUBLIC key as PEM. The key file is decrypted to prove the pair matches."""
    issuer = load_issuer(issuer_key)
    pem = issuer.public_key_pem()
    if out is not None:
        write_atomic(out, pem.encode("ascii"))
    if json_output:
        print_json({"key_id": issuer.key_id, "name": issuer.name, "public_key_pem": pem,
                    "out": None if out is None else str(out)})
    elif out is None:
        typer.echo(pem, nl=False)
    else:
        console.print(f"[green]Wrote[/] public key {issuer.key_id} to {out}")


def register(app: typer.Typer) -> None:
    """Add `medsign keys ...` (with the log commands of :mod:`medsign_forensics.cli.keys_log`) to the main app."""
    from medsign_forensics.cli.keys_log import register_log_commands

    register_log_commands(keys_app)
    app.add_typer(keys_app, name="keys")

