"""`medsign verify` end to end: Rich report, JSON fields, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.verify import save_png

from medsign_forensics.cli.main import app
from medsign_forensics.evaluate.synthetic import World, build_extractor, build_world, sample_image

runner = CliRunner()
ENV = {"COLUMNS": "160"}
JSON_FIELDS = {"file", "verdict", "provenance_id", "p_value", "family_wise_p_value", "bit_accuracy", "matched_bits",
               "checks", "notes", "claimed_provenance_id", "sop_instance_uid", "error", "policy"}


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture
def world(tmp_path, extractor_dir) -> World:
    return build_world(tmp_path / "world", extractor_dir)


def invoke(world: World, *args: str):
    return runner.invoke(app, ["verify", *args, "--registry", str(world.registry_dir), "--extractor",
                               str(world.extractor_dir)], env=ENV)


def test_json_for_an_attributed_png_and_a_study(world, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    result = invoke(world, str(world.planted_png), str(study.path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["file"] for d in data] == [str(world.planted_png), str(study.path)]
    assert all(JSON_FIELDS <= set(d) for d in data)
    assert {d["verdict"] for d in data} == {"attributed"}
    assert data[0]["provenance_id"] == world.planted.provenance_id and data[0]["matched_bits"] == 48
    assert data[0]["bit_accuracy"] == 1.0 and data[0]["p_value"] == pytest.approx(2.0**-48)
    assert {c["name"]: c["status"] for c in data[1]["checks"]}["pixel_hash"] == "pass"


def test_rich_report_explains_the_evidence(world):
    result = invoke(world, str(world.planted_png))
    assert result.exit_code == 0, result.output
    assert "ATTRIBUTED" in result.output
    assert f"48 of 48 bits match key {world.planted.provenance_id}" in result.output
    assert "chance of this on an unwatermarked image is 3.6e-15" in result.output
    assert "registry_entry" in result.output


def test_exit_1_for_an_alarm_outranks_exit_2(world, tmp_path):
    study = world.write_study(tmp_path / "study.dcm", sample_image(55))  # genuine tags on other pixels
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\0" * 40)
    result = invoke(world, str(study.path), str(bad), "--json")
    assert result.exit_code == 1
    verdicts = {d["file"]: d for d in json.loads(result.stdout)}
    assert verdicts[str(study.path)]["verdict"] == "mismatch"
    assert verdicts[str(bad)]["verdict"] == "error" and verdicts[str(bad)]["error_code"] == 2


def test_exit_2_for_an_unreadable_file_and_0_for_not_detected(world, tmp_path):
    real = save_png(tmp_path / "real.png", sample_image(56))
    assert invoke(world, str(real)).exit_code == 0
    result = invoke(world, str(real), str(tmp_path / "missing.png"))
    assert result.exit_code == 2
    assert "NOT DETECTED" in result.output and "no such file" in result.output


def test_revoked_is_an_alarm(world):
    with world.open_registry() as registry:
        registry.revoke(world.planted.provenance_id, world.issuer, reason="key leaked")
    result = invoke(world, str(world.planted_png), "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)[0]["verdict"] == "revoked"


def test_strict_policy_and_bad_policy(world, tmp_path):
    assert json.loads(invoke(world, str(world.planted_png), "--json", "--policy", "strict").stdout)[0]["policy"] == \
        "strict"
    result = invoke(world, str(world.planted_png), "--policy", "lenient")
    assert result.exit_code == 2 and "unknown policy" in result.output


def test_pinned_issuer_key(world, tmp_path):
    from medsign_forensics.provenance import IssuerKey

    stranger = tmp_path / "stranger.pem"
    stranger.write_text(IssuerKey.generate("Stranger").public_key_pem())
    result = invoke(world, str(world.planted_png), "--trust", str(stranger))
    assert result.exit_code == 2 and "not a valid trusted issuer" in result.output  # that file: an error line
    own = tmp_path / "own.pem"
    own.write_text(world.issuer.public_key_pem())
    assert invoke(world, str(world.planted_png), "--trust", str(own)).exit_code == 0


def test_missing_extractor_is_exit_4(world, tmp_path):
    result = runner.invoke(app, ["verify", str(world.planted_png), "--registry", str(world.registry_dir),
                                 "--extractor", str(tmp_path / "none")], env=ENV)
    assert result.exit_code == 4 and "manifest" in result.output
