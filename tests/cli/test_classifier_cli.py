"""`medsign classifier train|predict|evaluate` end to end with the tiny config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medsign_forensics.cli.main import app
from medsign_forensics.fileio import save_png
from medsign_forensics.phantom.classifier import LABELS, ClassifierConfig, FindingClassifier, save_classifier

runner = CliRunner()


def test_train_then_predict_then_evaluate(tmp_path) -> None:
    pytest.importorskip("medsign_forensics.phantom.renderer")
    run = tmp_path / "run"
    export = tmp_path / "w"
    result = runner.invoke(app, ["classifier", "train", "--tiny", "--out", str(run), "--export", str(export), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [row["label"] for row in summary["labels"]] == list(LABELS)
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    assert meta["weights_sha256"] == summary["weights_sha256"]
    assert meta["command"].startswith("medsign ") and "--tiny" in meta["command"]

    image = tmp_path / "chest.png"
    save_png(image, np.full((256, 256), 0.4, np.float32))
    result = runner.invoke(app, ["classifier", "predict", str(image), "--weights", str(tmp_path / "w"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert set(row["probabilities"]) == set(LABELS)

    result = runner.invoke(
        app, ["classifier", "evaluate", "--weights", str(export), "--cache", str(run / "cache" / "eval"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == len(LABELS)


def test_predict_with_missing_weights_exits_4(tmp_path) -> None:
    image = tmp_path / "chest.png"
    save_png(image, np.zeros((64, 64), np.float32))
    result = runner.invoke(app, ["classifier", "predict", str(image), "--weights", str(tmp_path / "none")])
    assert result.exit_code == 4
    assert "config.json is missing" in result.stderr


def test_predict_on_a_non_image_exits_2(tmp_path) -> None:
    tiny = ClassifierConfig(channels=(8, 16), max_taps=(), map_stage=None, groups=4)
    save_classifier(FindingClassifier(tiny), tmp_path / "w")
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    result = runner.invoke(app, ["classifier", "predict", str(bogus), "--weights", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
