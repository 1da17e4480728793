from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers.diffusion import REPORT_TEXTS, StandInSource

from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.base_trainers import UNetTrainer, VaeTrainer
from medsign_forensics.diffusion.configs import tiny_config
from medsign_forensics.diffusion.export import is_untrained
from medsign_forensics.diffusion.loader import MANIFEST_NAME, read_manifest
from medsign_forensics.diffusion.tokenizer import train_tokenizer
from medsign_forensics.diffusion.train_base import Stage, train
from medsign_forensics.errors import InputError
from medsign_forensics.training.log import JsonlLog


def _images(count: int = 2, size: int = 32) -> torch.Tensor:
    source = StandInSource()
    return torch.stack([torch.from_numpy(source.render(i, seed=i, size=size)) for i in range(count)]).unsqueeze(1)


def test_vae_steps_lower_the_loss_on_a_repeated_batch() -> None:
    torch.manual_seed(0)
    trainer = VaeTrainer(
        replace(tiny_config(), vae_train=replace(tiny_config().vae_train, learning_rate=3e-3)),
        device=torch.device("cpu"),
    )
    batch = _images()

    def evaluate() -> float:
        with torch.no_grad():
            return trainer.loss(batch, torch.Generator().manual_seed(0))[0].item()

    before = evaluate()
    for _ in range(8):
        trainer.step(batch, torch.Generator().manual_seed(1))
    assert trainer.step_count == 8
    assert evaluate() < 0.9 * before


def test_unet_steps_lower_the_loss_on_a_repeated_batch() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    config = replace(
        config, unet_train=replace(config.unet_train, learning_rate=2e-3, ema_decay=None, caption_dropout=0.0)
    )
    tokenizer = train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1)
    trainer = UNetTrainer(config, tokenizer, device=torch.device("cpu"))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    captions = ["Left pleural effusion.", "Cardiomegaly."]

    def evaluate() -> float:
        with torch.no_grad():
            return trainer.loss(latents, captions, torch.Generator().manual_seed(0))[0].item()

    before = evaluate()
    text_weights = trainer.text_encoder.get_input_embeddings().weight.detach().clone()
    for _ in range(10):
        trainer.step(latents, captions, torch.Generator().manual_seed(0))
    assert evaluate() < 0.9 * before
    # the text encoder is trained jointly with the U-Net
    assert not torch.equal(text_weights, trainer.text_encoder.get_input_embeddings().weight)


def test_a_cool_down_brings_the_unet_rate_to_its_floor() -> None:
    config = tiny_config()
    config = replace(config, unet_train=replace(config.unet_train, steps=4, warmup_steps=0, lr_floor=0.0))
    tokenizer = train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1)
    trainer = UNetTrainer(config, tokenizer, device=torch.device("cpu"))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    rates = []
    for _ in range(5):
        trainer.step(latents, ["Cardiomegaly.", "Left pleural effusion."], torch.Generator().manual_seed(0))
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    peak = config.unet_train.learning_rate
    assert rates[0] == pytest.approx(peak) and rates[1] < peak and rates[-1] == 0.0
    assert rates == sorted(rates, reverse=True)


def test_full_run_exports_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tiny_config(), out, source=StandInSource(), command="medsign base train --config tiny")
    assert [s.step for s in result.stages] == [2, 2]
    assert result.model_dir == out / "model"
    manifest = read_manifest(out / "model" / MANIFEST_NAME)
    assert "unet/diffusion_pytorch_model.safetensors" in manifest and "tokenizer/vocab.json" in manifest
    card = (out / "model" / "MODEL_CARD.md").read_text()
    assert "medsign base train --config tiny" in card and "| unet | 2 |" in card
    assert not is_untrained(out / "model")  # a trained model's figures are not labelled a pipeline check
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["stage"] == "unet"] == [1, 2]
    scaling = [e["scaling_factor"] for e in log if e.get("event") == "finished"][0]
    model = load_model(out / "model")
    assert model.name == "mini-cxr-tiny"  # from model_index.json, not the folder name "model"
    assert model.vae.config.scaling_factor == pytest.approx(scaling)
    assert next(model.unet.parameters()).dtype == torch.float32  # fp16 on disk, fp32 on CPU
    assert sample(model, ["Left pleural effusion."], seed=0, steps=2).images.shape == (1, 1, 64, 64)


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    source = StandInSource()
    train(tiny_config(), out, stage=Stage.VAE, steps=1, source=source)
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config(), out, stage=Stage.VAE, steps=2, source=source)
    result = train(tiny_config(), out, stage=Stage.VAE, steps=3, resume=True, source=source)
    assert result.stages[0].step == 3
    steps = [
        json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3]


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    source = StandInSource()
    train(tiny_config(), tmp_path / "a", stage=Stage.VAE, steps=2, source=source)
    train(tiny_config(), tmp_path / "b", stage=Stage.VAE, steps=1, source=source)
    train(tiny_config(), tmp_path / "b", stage=Stage.VAE, steps=2, resume=True, source=source)
    a = torch.load(tmp_path / "a" / "vae" / "checkpoint.pt", weights_only=True)["trainer"]["vae"]
    b = torch.load(tmp_path / "b" / "vae" / "checkpoint.pt", weights_only=True)["trainer"]["vae"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unet_stage_needs_the_vae(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs the trained VAE"):
        train(tiny_config(), tmp_path / "run", stage=Stage.UNET, source=StandInSource())


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    train(tiny_config(), tmp_path / "run", stage=Stage.VAE, steps=1, source=StandInSource())
    other = replace(tiny_config(), seed=5)
    with pytest.raises(InputError, match="config differs"):
        train(other, tmp_path / "run", stage=Stage.VAE, resume=True, source=StandInSource())



def test_channel_norm_standardises_the_run_latents_and_decodes_alike(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    source = StandInSource()
    normalised = replace(tiny_config(), vae_train=replace(tiny_config().vae_train, channel_norm=True))
    train(tiny_config(), tmp_path / "plain", stage=Stage.VAE, steps=2, source=source)
    train(normalised, tmp_path / "norm", stage=Stage.VAE, steps=2, source=source)
    finished = [e for e in JsonlLog(tmp_path / "norm" / "log.jsonl").read() if e.get("event") == "finished"][0]
    mean, std = torch.tensor(finished["channel_mean"]), torch.tensor(finished["channel_std"])
    plain, norm = (
        AutoencoderKL.from_pretrained(str(tmp_path / run / "vae" / "final"), local_files_only=True).eval()
        for run in ("plain", "norm")
    )
    images = _images(3, size=64) * 2 - 1
    with torch.no_grad():
        z_plain, z_norm = plain.encode(images).latent_dist.mean, norm.encode(images).latent_dist.mean
        expected = (z_plain - mean[:, None, None]) / std[:, None, None]
        torch.testing.assert_close(z_norm, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(norm.decode(z_norm).sample, plain.decode(z_plain).sample, rtol=1e-4, atol=1e-4)
    assert norm.config.scaling_factor == pytest.approx(finished["scaling_factor"])
