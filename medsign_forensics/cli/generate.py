"""`medsign generate`: report text -> watermarked synthetic chest image as a DICOM study with signed provenance.

The per-image statement is signed with the issuer's private key (``--issuer-key``, passphrase from
MEDSIGN_PASSPHRASE or a hidden prompt); see :mod:`medsign_forensics.generate` for why and for every check made
before anything is generated. Exit codes: 0 written; 2 bad input (empty report, existing output, wrong
suffix); 4 deployment or base model missing or failing its hash check, or too weak to be attributed; 5 registry
or issuer key unusable (also: the deployment is revoked or unregistered); 6 the study cannot be written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medsign_forensics.cli.common import console, handle_errors, passphrase_prompt, print_json
from medsign_forensics.errors import InputError, RegistryError
from medsign_forensics.provenance.keys import load_issuer_key


def register(app: typer.Typer) -> None:
    @app.command("generate")
    @handle_errors
    def generate_command(
        report: Annotated[str, typer.Option("--report", help="Report text (findings/impression) to generate from.")],
        out: Annotated[Path, typer.Option("--out", dir_okay=False, help="DICOM file to write (.dcm).")],
        issuer_key: Annotated[Path, typer.Option(
            "--issuer-key", envvar="MEDSIGN_ISSUER_KEY", dir_okay=False,
            help="Encrypted issuer key (from `medsign keys init`) that signs the per-image statement; it must be "
                 "an issuer of the registry.")],
        deployment: Annotated[Path | None, typer.Option(
            "--deployment", file_okay=False,
            help="Deployment folder (watermarked decoder + key); default: the shipped demo deployment.")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Random seed of the initial noise (recorded).")] = 0,
        png: Annotated[Path | None, typer.Option("--png", dir_okay=False,
                                                    help="Also write the same pixels as an 8-bit PNG.")] = None,
        registry: Annotated[Path | None, typer.Option(
            "--registry", envvar="MEDSIGN_REGISTRY", file_okay=False,
            help="Registry that issued the deployment's key; default: the demo registry.")] = None,
        model: Annotated[Path | None, typer.Option(
            "--model", file_okay=False, help="Base model folder; default: the one the deployment names.")] = None,
        steps: Annotated[int, typer.Option("--steps", min=1, help="DPM-Solver++ steps.")] = 25,
        guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance (<= 1: off).")] = 4.0,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        policy: Annotated[str | None, typer.Option(
            "--policy", help="Decision policy (name or TOML) whose attribution the deployment must reach.")] = None,
        allow_weak: Annotated[bool, typer.Option(
            "--allow-weak", help="Research only: generate even when the deployment's held-out accuracy is too "
                                 "low for its images to be attributed.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
    ) -> None:
        """Generate a synthetic study: Secondary Capture, labelled synthetic, watermarked, with signed provenance."""
        from medsign_forensics.generate import generate_study, load_default_deployment
        from medsign_forensics.watermark.deployment import load_deployment

        for target in (out, png):
            if target is not None and target.exists():
                raise InputError("already exists; choose another output (studies are never overwritten)",
                                 path=target)
        loaded = load_default_deployment() if deployment is None else load_deployment(deployment)
        if not issuer_key.is_file():
            raise RegistryError("no issuer key file here; create one with `medsign keys init`", path=issuer_key)
        signer = load_issuer_key(issuer_key, passphrase_prompt())
        result = generate_study(report=report, out=out, signer=signer, deployment=loaded, registry=registry,
                                model=model, seed=seed, steps=steps, guidance_scale=guidance, png=png, device=device,
                                policy=policy, allow_weak=allow_weak)
        if json_output:
            print_json(result.to_dict())
            return
        console.print(f"wrote [bold]{result.study.path}[/] ({result.width}x{result.height}, deployment "
                      f"{result.deployment}, provenance {result.provenance_id}, seed {seed}) in {result.seconds:.1f} s")
        console.print(f"SOP Instance UID {result.study.sop_instance_uid}")
        if result.png is not None:
            console.print(f"wrote [bold]{result.png}[/] (same pixels, PNG)")
