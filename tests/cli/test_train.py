import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medsign_forensics.cli.main import app

runner = CliRunner()


def _folder(path):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_train_extractor_json_summary(tmp_path):
    data = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--stage", "extractor", "--data", str(data), "--out", str(out), "--steps", "2",
        "--batch", "2", "--size", "32", "--bits", "32", "--attacks", "none,jpeg_q50", "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["stage"] == "extractor" and summary["steps"] == 2 and len(summary["extractor_sha256"]) == 64
    assert (out / "extractor.safetensors").is_file()
    again = runner.invoke(app, ["train", "--stage", "extractor", "--data", str(data), "--out", str(out),
                                "--steps", "2", "--batch", "2", "--size", "32", "--bits", "32",
                                "--attacks", "none,jpeg_q50"])
    assert again.exit_code == 2 and "--resume" in again.output


def test_train_extractor_bad_input(tmp_path):
    missing = runner.invoke(app, ["train", "--stage", "extractor", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "--data" in missing.output
    bad_attack = runner.invoke(app, ["train", "--stage", "extractor", "--data", str(_folder(tmp_path / "i")),
                                     "--out", str(tmp_path / "o"), "--attacks", "none,sharpen"])
    assert bad_attack.exit_code == 2 and "unknown attack" in bad_attack.output
    unknown_stage = runner.invoke(app, ["train", "--stage", "bogus", "--out", str(tmp_path / "o")])
    assert unknown_stage.exit_code != 0
