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
