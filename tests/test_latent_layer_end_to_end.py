"""The latent layer end to end with the shipped mini-cxr: issue -> generate -> verify, library and CLI.

A tiny RANDOM diffusion model cannot carry this layer: its VAE and U-Net do not invert (measured: 54-59 % of the
initial-noise signs come back, every key bit at chance), so these tests use the shipped 30 MB mini-cxr, the model
the layer is for (about ten seconds in all).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.verify import deployment_for

from medsign_forensics.cli.main import app
from medsign_forensics.diffusion import load_model
from medsign_forensics.evaluate.synthetic import REPORT, build_extractor, build_world
from medsign_forensics.generate import generate_study
from medsign_forensics.provenance.layers import add_latent_layer, latent_layers
from medsign_forensics.provenance.policy import Attribution
from medsign_forensics.verify import VerdictKind, Verifier
from medsign_forensics.watermark.deployment import add_latent_to_deployment, load_deployment
from medsign_forensics.watermark.latent import LatentConfig

STEPS = {"steps": 25, "guidance_scale": 4.0}
# A fixed key and secret keep these tests deterministic: with a fresh one, the 48 bits read of a given image vary a
# little with the keystream (measured mean 0.99 clean), which would make the exact counts below random.
SECRET = np.random.default_rng(7).bytes(32)
KEY = np.random.default_rng(8).integers(0, 2, 48).astype(np.uint8)


@pytest.fixture(scope="module")
def mini():
    return load_model()


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


def _with_latent(world, mini, folder: Path) -> Path:
    deployment = load_deployment(folder)
    with world.open_registry() as registry:
        add_latent_layer(registry, deployment.provenance_id, secret=SECRET, config=LatentConfig().to_dict(),
                         base_weights_sha256=mini.weights_sha256)
        layer = latent_layers(registry)[deployment.provenance_id]
    add_latent_to_deployment(folder, layer)
    return folder


def test_the_latent_layer_alone_is_read_but_never_attributes(tmp_path, mini, extractor_dir):
    """This world's decoder layer is the plain one (a HiDDeN test extractor), so only the latent layer carries
    the key: it is read (44+ of 48 bits) but, uncorroborated, stays inconclusive (imprinting forges it)."""
    world = build_world(tmp_path / "world", extractor_dir, decoys=2)
    marked = _with_latent(world, mini, deployment_for(world, mini, tmp_path / "site-latent", key=KEY))
    plain = deployment_for(world, mini, tmp_path / "site-plain")
    study = generate_study(report=REPORT, out=tmp_path / "study.dcm", signer=world.issuer, deployment=marked,
                           registry=world.registry_dir, model=mini, seed=3, png=tmp_path / "study.png",
                           allow_weak=True, **STEPS)
    other = generate_study(report=REPORT, out=tmp_path / "plain.dcm", signer=world.issuer, deployment=plain,
                           registry=world.registry_dir, model=mini, seed=3, png=tmp_path / "plain.png",
                           allow_weak=True, **STEPS)
    assert study.layers == ("decoder", "latent") and other.layers == ("decoder",)
    with Verifier.open(registry=world.registry_dir, extractor=world.extractor_dir, layers=("decoder", "latent"),
                       model=mini) as verifier:
        png, dicom, unmarked = (verifier.verify_file(p) for p in (study.png, study.study.path, other.png))
    assert png.kind is VerdictKind.INCONCLUSIVE
    assert png.latent is not None and png.latent.layer == "latent" and png.latent.matched_bits >= 44
    assert png.latent.attribution is Attribution.INCONCLUSIVE and png.latent.family_wise_p_value < 1e-6
    assert png.to_dict()["layers"]["latent"]["provenance_id"] == study.provenance_id
    assert {c.name: c.status.value for c in png.checks}["latent_corroborated"] == "fail"
    checks = {c.name: c.status.value for c in dicom.checks}
    assert dicom.kind is VerdictKind.INCONCLUSIVE and checks["tags_match_watermark"] == "skipped"
    assert checks["statement_signature"] == "pass"
    # same report and seed without the layer: the plain model's own noise carries no key
    assert unmarked.latent is not None and unmarked.latent.attribution is Attribution.NOT_DETECTED
    # the default (decoder layer only) reads nothing here: this deployment's decoder is the plain one
    with Verifier.open(registry=world.registry_dir, extractor=world.extractor_dir) as verifier:
        fast = verifier.verify_file(study.png)
    assert fast.latent is None and fast.provenance_id != study.provenance_id


def test_cli_issues_a_latent_key_and_verify_reads_both_layers(tmp_path, mini, extractor_dir, monkeypatch):
    monkeypatch.setattr("medsign_forensics.watermark.latent.new_secret", lambda: SECRET)
    world = build_world(tmp_path / "world", extractor_dir, decoys=1)
    folder = deployment_for(world, mini, tmp_path / "site", key=KEY)
    deployment = load_deployment(folder)
    runner = CliRunner()
    added = runner.invoke(app, ["keys", "add-latent", deployment.provenance_id, "--registry",
                                str(world.registry_dir), "--deployment", str(folder), "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["base_weights_sha256"] == mini.weights_sha256
    again = runner.invoke(app, ["keys", "add-latent", deployment.provenance_id, "--registry", str(world.registry_dir)])
    assert again.exit_code != 0 and "already has a latent layer" in again.output
    secret = load_deployment(folder).manifest["latent"]["secret_hex"]
    study = generate_study(report=REPORT, out=tmp_path / "study.dcm", signer=world.issuer, deployment=folder,
                           registry=world.registry_dir, model=mini, seed=4, png=tmp_path / "study.png",
                           allow_weak=True, **STEPS)
    result = runner.invoke(app, ["verify", str(study.png), "--registry", str(world.registry_dir), "--extractor",
                                 str(world.extractor_dir), "--layers", "decoder,latent", "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)[0]
    assert verdict["verdict"] == "inconclusive"  # the latent layer alone (see the test above)
    latent = verdict["layers"]["latent"]
    assert latent["attribution"] == "inconclusive" and latent["provenance_id"] == deployment.provenance_id
    assert latent["matched_bits"] >= 44 and secret not in result.output
    bad = runner.invoke(app, ["verify", str(study.png), "--registry", str(world.registry_dir), "--layers", "latent"])
    assert bad.exit_code == 2 and "decoder layer is always read" in bad.output
    folder_to_scan = tmp_path / "archive"
    folder_to_scan.mkdir()
    (folder_to_scan / "study.png").write_bytes(study.png.read_bytes())
    scan = runner.invoke(app, ["scan", str(folder_to_scan), "--registry", str(world.registry_dir), "--extractor",
                               str(world.extractor_dir), "--layers", "decoder,latent", "--jsonl",
                               str(tmp_path / "scan.jsonl"), "--json"])
    assert scan.exit_code == 0, scan.output
    [row] = [json.loads(line) for line in (tmp_path / "scan.jsonl").read_text().splitlines() if line.strip()]
    assert row["verdict"] == "inconclusive" and row["layers"]["latent"]["provenance_id"] == deployment.provenance_id


def test_layers_naming_different_deployments_are_a_mismatch():
    from medsign_forensics.provenance.entries import KeyStatus
    from medsign_forensics.verdict import KeyMatch, layers_agree

    def match(pid: str, layer: str) -> KeyMatch:
        return KeyMatch(provenance_id=pid, key_status=KeyStatus.ACTIVE, matched_bits=48, bits=48, p_value=1e-14,
                        family_wise_p_value=1e-12, candidates=3, attribution=Attribution.ATTRIBUTED, layer=layer)

    [check] = layers_agree(match("msp-a", "decoder"), match("msp-b", "latent"))
    assert check.status.value == "fail" and check.event is not None
    assert layers_agree(match("msp-a", "decoder"), match("msp-a", "latent"))[0].status.value == "pass"
    assert np.isclose(match("msp-a", "decoder").bit_accuracy, 1.0)
