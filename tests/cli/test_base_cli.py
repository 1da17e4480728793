"""`medsign base sample` and `medsign base train` end to end, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medsign_forensics.cli.main import app
from medsign_forensics.diffusion import data as data_module
from medsign_forensics.diffusion import loader
from medsign_forensics.diffusion.configs import tiny_config
from medsign_forensics.diffusion.export import build_random_model

runner = CliRunner()
TEXTS = ["Left pleural effusion.", "Cardiomegaly with atelectasis.", "No acute abnormality."] * 20


class _Source:
    """Two studies: a bright square on the image right (the patient's left), or nothing."""

    def __len__(self) -> int:
        return 2

    def report_id(self, index: int) -> str:
        return str(index)

    def captions(self, index: int) -> tuple[str, ...]:
        return ("Left pleural effusion.",) if index == 0 else ("No acute abnormality.",)

    def render(self, index: int, *, seed: int, size: int) -> np.ndarray:
        image = np.full((size, size), 0.2, dtype=np.float32)
        if index == 0:
            image[size // 2 :, 3 * size // 4 :] = 0.8
        return image


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("m") / "tiny", config=tiny_config(), texts=TEXTS)


def test_sample_writes_png_and_latents(model_dir: Path, tmp_path: Path) -> None:
    out, latents = tmp_path / "x.png", tmp_path / "x0.npy"
    result = runner.invoke(
        app,
        [
            "base",
            "sample",
            "--report",
            "Small left pleural effusion.",
            "--out",
            str(out),
            "--model",
            str(model_dir),
            "--seed",
            "3",
            "--steps",
            "3",
            "--guidance",
            "3.5",
            "--latents-out",
            str(latents),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seed"] == 3 and summary["steps"] == 3 and len(summary["weights_sha256"]) == 64
    assert summary["prompt"] == "Small left pleural effusion." and summary["layout"] is False  # report form
    image = Image.open(out)
    assert image.mode == "L" and image.size == (64, 64)
    assert np.load(latents).shape == (4, 8, 8)


def test_sample_is_reproducible(model_dir: Path, tmp_path: Path) -> None:
    pictures = []
    for name in ("a.png", "b.png"):
        args = [
            "base",
            "sample",
            "--report",
            "Cardiomegaly.",
            "--out",
            str(tmp_path / name),
            "--model",
            str(model_dir),
            "--steps",
            "2",
        ]
        assert runner.invoke(app, args).exit_code == 0
        pictures.append(np.asarray(Image.open(tmp_path / name)))
    assert np.array_equal(*pictures)


def test_sample_bad_model_folder_exits_4(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["base", "sample", "--report", "x", "--out", str(tmp_path / "x.png"), "--model", str(tmp_path / "missing")]
    )
    assert result.exit_code == 4
    assert "does not exist" in result.output


def test_sample_without_shipped_default_exits_4(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(loader, "DEFAULT_MODEL_DIR", tmp_path / "mini-cxr")
    result = runner.invoke(app, ["base", "sample", "--report", "x", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 4 and "has not been trained" in result.output


def test_sample_refuses_non_png(model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["base", "sample", "--report", "x", "--out", str(tmp_path / "x.jpg"), "--model", str(model_dir)]
    )
    assert result.exit_code == 2


def test_train_tiny_then_sample_from_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module, "load_source", lambda config: _Source())
    out = tmp_path / "run"
    result = runner.invoke(app, ["base", "train", "--config", "tiny", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["step"] for s in summary["stages"]] == [2, 2]
    assert summary["model"] == str(out / "model")
    card = (out / "model" / "MODEL_CARD.md").read_text()
    assert "base train --config tiny" in card
    png = tmp_path / "g.png"
    result = runner.invoke(
        app,
        [
            "base",
            "sample",
            "--report",
            "Left pleural effusion.",
            "--out",
            str(png),
            "--model",
            str(out / "model"),
            "--steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output and png.is_file()


def test_train_stage_and_resume(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module, "load_source", lambda config: _Source())
    out = tmp_path / "run"
    first = runner.invoke(
        app, ["base", "train", "--config", "tiny", "--out", str(out), "--stage", "vae", "--steps", "1"]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        app, ["base", "train", "--config", "tiny", "--out", str(out), "--stage", "vae", "--steps", "2"]
    )
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(
        app,
        [
            "base",
            "train",
            "--config",
            "tiny",
            "--out",
            str(out),
            "--stage",
            "vae",
            "--steps",
            "2",
            "--resume",
            "--json",
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["stages"][0]["step"] == 2


def test_train_init_from_is_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_dir: Path) -> None:
    monkeypatch.setattr(data_module, "load_source", lambda config: _Source())
    out = tmp_path / "run"
    args = ["base", "train", "--config", "tiny", "--out", str(out), "--stage", "unet", "--steps", "1"]
    result = runner.invoke(app, [*args, "--init-from", str(model_dir), "--json"])
    assert result.exit_code == 0, result.output
    card = (out / "model" / "MODEL_CARD.md").read_text()
    assert f"--init-from {model_dir}" in card and "Initial model: mini-cxr-tiny" in card
    refused = runner.invoke(app, ["base", "train", "--config", "tiny", "--out", str(tmp_path / "r2"), "--init-from",
                                  str(model_dir)])
    assert refused.exit_code == 2 and "stage B only" in refused.output


def test_train_unknown_stage(tmp_path: Path) -> None:
    result = runner.invoke(app, ["base", "train", "--config", "tiny", "--out", str(tmp_path / "r"), "--stage", "x"])
    assert result.exit_code == 2


def test_info_prints_the_hash_that_keys_issue_binds(model_dir: Path) -> None:
    from medsign_forensics.diffusion import load_model

    result = runner.invoke(app, ["base", "info", "--model", str(model_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["weights_sha256"] == load_model(model_dir).weights_sha256
    missing = runner.invoke(app, ["base", "info", "--model", str(model_dir.parent / "nowhere")])
    assert missing.exit_code == 4


def test_a_findings_layout_model_is_given_the_findings_prompt_and_the_layout(tmp_path: Path) -> None:
    from dataclasses import replace

    from medsign_forensics.diffusion.configs import LayoutConfig

    config = replace(tiny_config(), layout=LayoutConfig(enabled=True),
                     data=replace(tiny_config().data, captions="findings"))
    folder = build_random_model(tmp_path / "layout", config=config, texts=TEXTS)
    args = ["base", "sample", "--report", "Small left pleural effusion. No pneumothorax.", "--out",
            str(tmp_path / "x.png"), "--model", str(folder), "--steps", "2"]
    summary = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert summary["prompt"] == "mild left effusion." and summary["layout"] is True  # the parser's words
    assert summary["layout_guidance"] == "empty"  # the sampler's default policy, recorded
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "'mild left effusion.', with the report's layout" in result.stdout
