"""`medsign train --dataset` (decoder stage) and `medsign evaluate` end to end on a tiny random world."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers.tiny_world import evaluation_world

from medsign_forensics.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return evaluation_world(tmp_path_factory)


def _noise_folder(folder: Path, count: int = 40) -> Path:
    """Varied images, so that a barely trained extractor's outputs can still be whitened."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_train_all_stages_then_evaluate(world, tmp_path):
    deployment = tmp_path / "deployment"
    trained = runner.invoke(app, [
        "train", "--stage", "all", "--dataset", "cxr", "--model", str(world["model_dir"]),
        "--reports", str(world["reports"]), "--key", "A5C3E10F", "--out", str(deployment), "--bits", "32",
        "--data", str(_noise_folder(tmp_path / "images")), "--extractor-steps", "2", "--whiten-images", "40",
        "--steps", "1", "--batch", "2", "--n-reports", "3", "--sample-steps", "2", "--json",
    ])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.output)
    assert summary["stage"] == "all" and summary["registered"] is False and summary["key_hex"] == "a5c3e10f"
    assert summary["extractor_steps"] == 2 and summary["extractor_out"] == str(deployment / "extractor")
    assert summary["items"] == 3 and summary["steps"] == 1 and len(summary["decoder_sha256"]) == 64
    manifest = json.loads((deployment / "deployment.json").read_text())
    assert manifest["config"]["sample_steps"] == 2 and manifest["base_model"]["path"] == str(world["model_dir"])
    assert manifest["extractor"]["path"] == str((deployment / "extractor").resolve())

    out = tmp_path / "eval"
    evaluated = runner.invoke(app, [
        "evaluate", "--deployment", str(deployment), "--out", str(out), "--n", "2", "--baselines", "none",
        "--no-real-data", "--classifier", str(world["classifier"]), "--reports", str(world["reports"]), "--json",
    ])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.output)
    assert list(result["methods"]) == ["MedSign"] and result["items"] == 2
    assert 0 <= result["methods"]["MedSign"]["bit_accuracy_avg"] <= 1
    for name in ("evaluation.md", "evaluation.json", "fig3.png"):
        assert (out / name).is_file(), name


def test_cli_errors_have_their_exit_codes(world, tmp_path):
    base = ["train", "--dataset", "cxr", "--out", str(tmp_path / "d"), "--extractor", str(world["extractor"])]
    no_key = runner.invoke(app, base)
    assert no_key.exit_code == 2 and "needs a key" in no_key.output
    both = runner.invoke(app, [*base, "--key", "a5c3e10f", "--registry", str(tmp_path), "--provenance-id", "x"])
    assert both.exit_code == 2 and "not both" in both.output
    fundus = runner.invoke(app, ["train", "--dataset", "fundus", "--out", str(tmp_path / "d"),
                                 "--extractor", str(world["extractor"]), "--key", "a5c3e10f"])
    assert fundus.exit_code == 2 and "--reports" in fundus.output
    nothing = runner.invoke(app, ["train", "--out", str(tmp_path / "d")])
    assert nothing.exit_code == 2 and "--dataset" in nothing.output
    ablation = runner.invoke(
        app, [*base, "--key", "a5c3e10f", "--ablation", "no-watson", "--model", str(world["model_dir"])]
    )
    assert ablation.exit_code == 2 and "unknown ablation" in ablation.output
    missing = runner.invoke(app, ["evaluate", "--deployment", str(tmp_path / "nope"), "--out", str(tmp_path / "e")])
    assert missing.exit_code == 4 and "deployment.json" in missing.output
    conflicting = runner.invoke(app, ["evaluate", "--deployment", str(world["medsign"]), "--out", str(tmp_path / "e"),
                                      "--real-data", str(tmp_path), "--no-real-data"])
    assert conflicting.exit_code == 2
