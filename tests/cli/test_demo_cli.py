"""`medsign demo` without trained weights (the end-to-end run with a trained deployment is in
tests/test_end_to_end.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medsign_forensics.cli.main import app


def test_demo_without_trained_weights_says_what_it_skipped(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--reports", "1",
                                      "--deployment", str(tmp_path / "missing"), "--json"])
    assert result.exit_code == 0, result.output
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    assert steps["phantom world"]["status"] == "done"
    assert steps["generate"]["status"] == "skipped" and "deployment" in steps["generate"]["detail"]


def test_the_shipped_demo_attributes_every_artefact_through_both_bound_layers(tmp_path):
    """The real thing: shipped mini-cxr, demo deployment (bound decoder layer + latent layer), demo registry."""
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--reports", "1", "--json"])
    assert result.exit_code == 0, result.output
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    rows = steps["verify"]["rows"]
    assert len(rows) == 5 and all(row["verdict"] == "attributed" for row in rows), rows
    assert all(row["decoder bits"] == "48/48" and row["latent bits"] == "48/48" for row in rows), rows
    png = CliRunner().invoke(app, ["verify", str(tmp_path / "d" / "study.png"), "--registry",
                                   str(tmp_path / "d" / "registry"), "--json"])
    [verdict] = json.loads(png.stdout)
    checks = {check["name"]: check["status"] for check in verdict["checks"]}
    assert checks["content_binding"] == "pass"
    assert verdict["closest_key"]["coherence"] >= verdict["closest_key"]["coherence_threshold"]
