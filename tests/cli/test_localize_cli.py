from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers.localization import build_model_folder

from medsign_forensics.attacks.codec import to_uint8
from medsign_forensics.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("cli-model") / "model")


def _run(*args: str):
    return runner.invoke(app, ["localize", *args])


def test_generate_and_localize_writes_map_overlay_array_and_image(model_dir, tmp_path):
    out = tmp_path / "maps" / "map.png"
    result = _run("--report", "Small left pleural effusion.", "--model", str(model_dir), "--steps", "2",
                  "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [w["word"] for w in data["words"]] == ["left", "effusion"]
    assert data["normal"] is False and data["cas"] and data["aas"]
    array = np.load(tmp_path / "maps" / "map.npy")
    assert array.shape == (64, 64) and array.dtype == np.float32
    assert np.array_equal(np.asarray(Image.open(out)), to_uint8(array))
    assert np.asarray(Image.open(tmp_path / "maps" / "map_overlay.png")).shape == (64, 64, 3)
    assert np.asarray(Image.open(tmp_path / "maps" / "map_image.png")).shape == (64, 64)
    assert not list((tmp_path / "maps").glob("*.tmp"))


def test_localize_an_existing_image_with_ablations(model_dir, tmp_path):
    picture = tmp_path / "chest.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64)) * 255).astype(np.uint8)).save(picture)
    out = tmp_path / "map.png"
    result = _run("--report", "Right upper lobe nodule.", "--image", str(picture), "--model", str(model_dir),
                  "--timesteps", "100,300", "--no-cas", "--no-aas", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["timesteps"] == [100, 300] and not data["cas"] and not data["aas"]
    assert all("cas_token" not in word for word in data["words"])
    array = np.load(tmp_path / "map.npy")
    assert array.shape == (48, 64) and array.max() == pytest.approx(1.0)
    assert not (tmp_path / "map_image.png").exists()


def test_default_timesteps_are_the_library_s_and_the_help_says_them(model_dir, tmp_path):
    from medsign_forensics.localization import DEFAULT_TIMESTEPS

    picture = tmp_path / "chest.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)).save(picture)
    result = _run("--report", "Left effusion.", "--image", str(picture), "--model", str(model_dir),
                  "--out", str(tmp_path / "m.png"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["timesteps"] == list(DEFAULT_TIMESTEPS)
    assert "default " + ",".join(map(str, DEFAULT_TIMESTEPS)) in " ".join(_run("--help").stdout.split())


def test_normal_report_gives_a_zero_map(model_dir, tmp_path):
    result = _run("--report", "Lungs are clear. No effusion.", "--model", str(model_dir), "--steps", "2",
                  "--out", str(tmp_path / "m.png"))
    assert result.exit_code == 0, result.output
    assert "all zeros" in result.stdout
    assert not np.load(tmp_path / "m.npy").any()


def test_without_a_model_folder_the_loader_error_is_reported(tmp_path):
    result = _run("--report", "Left effusion.", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "m.png"))
    assert result.exit_code == 4
    assert "does not exist" in result.stderr


def test_default_model_missing_is_a_model_error(tmp_path, monkeypatch):
    from medsign_forensics.diffusion import loader

    monkeypatch.setattr(loader, "DEFAULT_MODEL_DIR", tmp_path / "no-mini-cxr")
    result = _run("--report", "Left effusion.", "--out", str(tmp_path / "m.png"))
    assert result.exit_code == 4
    assert "mini-cxr" in result.stderr


def test_bad_arguments_are_input_errors(model_dir, tmp_path):
    assert _run("--report", "Left effusion.", "--out", str(tmp_path / "m.jpg")).exit_code == 2
    bad = _run("--report", "Left effusion.", "--image", str(tmp_path / "x.png"), "--model", str(model_dir),
               "--timesteps", "a,b", "--out", str(tmp_path / "m.png"))
    assert bad.exit_code == 2 and "timesteps" in bad.stderr
