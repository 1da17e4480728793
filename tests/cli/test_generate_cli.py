"""`medsign generate` end to end with a tiny random model: study and PNG written, then verified by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.verify import deployment_for, tiny_model_dir

from medsign_forensics.cli.main import app
from medsign_forensics.diffusion import load_model
from medsign_forensics.evaluate.synthetic import REPORT, World, build_extractor, build_world
from medsign_forensics.provenance.keys import ScryptParams, save_issuer_key

runner = CliRunner()
PASSPHRASE = "generate cli passphrase"
FAST = ["--steps", "2", "--guidance", "1"]


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_model_dir(tmp_path_factory))


@pytest.fixture
def setup(tmp_path, extractor_dir, model):
    world = build_world(tmp_path / "world", extractor_dir, decoys=1)
    key_file = save_issuer_key(world.issuer, tmp_path / "issuer.key", PASSPHRASE, scrypt=ScryptParams(n=2**14))
    folder = deployment_for(world, model, tmp_path / "site-cli")
    return world, key_file, folder


def invoke(world: World, key_file: Path, folder: Path, *args: str, passphrase: str = PASSPHRASE):
    return runner.invoke(app, ["generate", "--report", REPORT, "--issuer-key", str(key_file), "--deployment",
                               str(folder), "--registry", str(world.registry_dir), "--allow-weak", *FAST, *args],
                         env={"MEDSIGN_PASSPHRASE": passphrase, "COLUMNS": "200"})


def test_generate_writes_a_verifiable_study_and_png(setup, tmp_path):
    world, key_file, folder = setup
    out, png = tmp_path / "study.dcm", tmp_path / "study.png"
    result = invoke(world, key_file, folder, "--out", str(out), "--png", str(png), "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["out"] == str(out) and made["png"] == str(png) and made["seed"] == 3
    assert out.is_file() and png.is_file()
    verified = runner.invoke(app, ["verify", str(out), "--json", "--registry", str(world.registry_dir),
                                   "--extractor", str(world.extractor_dir)])
    data = json.loads(verified.stdout)[0]
    checks = {c["name"]: c["status"] for c in data["checks"]}
    assert data["claimed_provenance_id"] == made["provenance_id"]
    assert data["sop_instance_uid"] == made["sop_instance_uid"]
    assert all(checks[name] == "pass" for name in ("record_signature", "statement_signature", "pixel_hash",
                                                   "report_hash", "sop_instance_uid", "synthetic_labels"))
    # the tiny decoder writes no watermark: the tags are genuine but the pixels do not carry the key
    assert data["verdict"] == "mismatch" and verified.exit_code == 1


def test_generate_refuses_to_overwrite_and_reports_a_wrong_passphrase(setup, tmp_path):
    world, key_file, folder = setup
    existing = tmp_path / "exists.dcm"
    existing.write_bytes(b"keep me")
    result = invoke(world, key_file, folder, "--out", str(existing))
    assert result.exit_code == 2 and "never overwritten" in result.output
    assert existing.read_bytes() == b"keep me"
    wrong = invoke(world, key_file, folder, "--out", str(tmp_path / "x.dcm"), passphrase="not the passphrase")
    assert wrong.exit_code == 5 and "wrong passphrase" in wrong.output


def test_missing_default_deployment_is_a_model_error(setup, tmp_path):
    world, key_file, _ = setup
    result = runner.invoke(app, ["generate", "--report", REPORT, "--out", str(tmp_path / "x.dcm"), "--issuer-key",
                                 str(key_file), "--deployment", str(tmp_path / "nowhere")],
                           env={"MEDSIGN_PASSPHRASE": PASSPHRASE})
    assert result.exit_code == 4 and "deployment.json" in result.output


def test_no_passphrase_and_no_terminal_is_a_key_error_not_an_abort(setup, tmp_path):
    world, key_file, folder = setup
    result = runner.invoke(app, ["generate", "--report", REPORT, "--out", str(tmp_path / "x.dcm"), "--issuer-key",
                                 str(key_file), "--deployment", str(folder), "--registry", str(world.registry_dir)],
                           env={"MEDSIGN_PASSPHRASE": None}, input="")
    assert result.exit_code == 5 and "MEDSIGN_PASSPHRASE" in result.output
    assert not (tmp_path / "x.dcm").exists()
