from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medsign_forensics.diffusion import loader
from medsign_forensics.diffusion.loader import MANIFEST_NAME, load_model, read_manifest
from medsign_forensics.errors import ModelError
from medsign_forensics.fileio import sha256_file


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_loads_exported_greyscale_model(grey_model_dir: Path) -> None:
    model = load_model(grey_model_dir)
    assert model.name == "mini-cxr-tiny" and not model.is_default
    assert (model.image_channels, model.latent_channels, model.image_size) == (1, 4, 64)
    assert model.dtype == torch.float32
    assert model.pipeline.safety_checker is None
    assert type(model.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert model.scheduler.config.prediction_type == "v_prediction"
    manifest = read_manifest(grey_model_dir / MANIFEST_NAME)
    assert set(model.weights) == {
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert all(manifest[name] == digest for name, digest in model.weights.items())
    assert len(model.weights_sha256) == 64


def test_loads_plain_diffusers_rgb_folder(rgb_model_dir: Path) -> None:
    model = load_model(rgb_model_dir)
    assert model.image_channels == 3
    assert model.weights["unet/diffusion_pytorch_model.safetensors"] == sha256_file(
        rgb_model_dir / "unet/diffusion_pytorch_model.safetensors"
    )
    # the folder's PNDM scheduler is replaced by DPM-Solver++ on the same betas
    assert type(model.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert model.scheduler.config.beta_end == 0.012


@pytest.mark.parametrize("fixture", ["grey_model_dir", "rgb_model_dir"])
def test_plain_diffusers_pipeline_generates(fixture: str, request: pytest.FixtureRequest) -> None:
    from diffusers import StableDiffusionPipeline

    folder = request.getfixturevalue(fixture)
    pipeline = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        "Left pleural effusion.", num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
    assert image.mode == ("L" if fixture == "grey_model_dir" else "RGB")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_default_not_trained_yet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(loader, "DEFAULT_MODEL_DIR", tmp_path / "mini-cxr")
    with pytest.raises(ModelError, match="has not been trained") as error:
        load_model()
    assert error.value.exit_code == 4


def test_default_requires_manifest(monkeypatch: pytest.MonkeyPatch, rgb_model_dir: Path) -> None:
    monkeypatch.setattr(loader, "DEFAULT_MODEL_DIR", rgb_model_dir)
    with pytest.raises(ModelError, match="no SHA256SUMS"):
        load_model()


def test_missing_component(grey_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(grey_model_dir, tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ModelError, match="unet component folder is missing"):
        load_model(folder)


def test_missing_weights_file(rgb_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(rgb_model_dir, tmp_path)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="holds no weights file"):
        load_model(folder)


def test_text_encoder_and_unet_mismatch(rgb_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(rgb_model_dir, tmp_path)
    _edit_json(folder / "unet" / "config.json", cross_attention_dim=64)
    with pytest.raises(ModelError, match="hidden size is 32 but the U-Net's cross_attention_dim is 64"):
        load_model(folder)


def test_vae_and_unet_channel_mismatch(rgb_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(rgb_model_dir, tmp_path)
    _edit_json(folder / "unet" / "config.json", in_channels=9)
    with pytest.raises(ModelError, match="4 latent channels but the U-Net takes 9"):
        load_model(folder)


def test_unsupported_architecture(rgb_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(rgb_model_dir, tmp_path)
    _edit_json(folder / "model_index.json", _class_name="StableDiffusionXLPipeline")
    with pytest.raises(ModelError, match="unsupported architecture 'StableDiffusionXLPipeline'"):
        load_model(folder)


def test_sdxl_style_unet_is_refused(rgb_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(rgb_model_dir, tmp_path)
    _edit_json(folder / "unet" / "config.json", addition_embed_type="text_time")
    with pytest.raises(ModelError, match="added conditioning"):
        load_model(folder)


def test_wrong_sha256(grey_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(grey_model_dir, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor's bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        load_model(folder)


def test_weights_not_listed_in_manifest(grey_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy(grey_model_dir, tmp_path)
    manifest = folder / MANIFEST_NAME
    kept = [line + "\n" for line in manifest.read_text().splitlines() if "unet/diffusion" not in line]
    manifest.write_text("".join(kept))
    with pytest.raises(ModelError, match="does not list the weights"):
        load_model(folder)


def test_strict_keys(rgb_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(rgb_model_dir, tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["decoder.extra_layer.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(ModelError, match="1 unexpected"):
        load_model(folder)


def test_shipped_default_loads_with_diffusers_and_generates() -> None:
    if not loader.DEFAULT_MODEL_DIR.is_dir():
        pytest.skip("mini-cxr has not been trained into medsign_forensics/weights yet")
    from diffusers import StableDiffusionPipeline

    from medsign_forensics.diffusion import sample

    model = load_model()
    assert model.is_default and model.image_size == 256 and model.image_channels == 1
    pipeline = StableDiffusionPipeline.from_pretrained(str(loader.DEFAULT_MODEL_DIR), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline("Cardiomegaly.", num_inference_steps=2).images[0].size == (256, 256)
    result = sample(model, ["Small left pleural effusion."], seed=0, steps=4)
    assert result.images.shape == (1, 1, 256, 256) and result.latents.shape == (1, 4, 32, 32)


def test_legacy_files_like_original_sd_releases(rgb_model_dir: Path, tmp_path: Path) -> None:
    """Pickled .bin weights, ``text_model.*`` keys with a position_ids buffer, old VAE attention names."""
    from safetensors.torch import load_file

    folder = _copy(rgb_model_dir, tmp_path)
    text = load_file(str(folder / "text_encoder" / "model.safetensors"))
    (folder / "text_encoder" / "model.safetensors").unlink()
    legacy_text = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in text.items()}
    legacy_text["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(legacy_text, folder / "text_encoder" / "pytorch_model.bin")
    vae = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy_vae = {}
    for key, value in vae.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        legacy_vae[key] = value
    torch.save(legacy_vae, folder / "vae" / "diffusion_pytorch_model.bin")

    model = load_model(folder)
    assert set(model.weights) == {
        "text_encoder/pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin",
    }
    assert torch.equal(
        model.vae.decoder.mid_block.attentions[0].to_q.weight, vae["decoder.mid_block.attentions.0.to_q.weight"]
    )
    embedding = next(v for k, v in text.items() if k.endswith("token_embedding.weight"))
    assert torch.equal(model.text_encoder.get_input_embeddings().weight, embedding)


def test_weights_digest_equals_the_loaded_models_without_loading_it(grey_model_dir: Path, tmp_path: Path) -> None:
    from medsign_forensics.diffusion.loader import weights_digest

    assert weights_digest(grey_model_dir) == load_model(grey_model_dir).weights_sha256
    assert weights_digest() == load_model().weights_sha256  # the shipped mini-cxr, through its SHA256SUMS
    broken = tmp_path / "broken"
    shutil.copytree(grey_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        weights_digest(broken)  # the same hash check as load_model
