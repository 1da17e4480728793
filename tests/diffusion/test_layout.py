"""The layout adapter (issue 15): a report's layout puts each finding on its stated side, a model trains with an
adapter, resumes exactly, exports it beside the SD-1.x folder, and samples with it exactly as diffusers' own
adapter pipeline does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.diffusion import StandInSource

from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.base_trainers import UNetTrainer
from medsign_forensics.diffusion.configs import GroundingConfig, LayoutConfig, MiniCxrConfig, tiny_config
from medsign_forensics.diffusion.layout import (
    KINDS,
    LayoutGuidance,
    adapter_residuals,
    guided_shares,
    layout_conditioning,
    report_layouts,
)
from medsign_forensics.diffusion.loader import MANIFEST_NAME, read_manifest
from medsign_forensics.diffusion.train_base import Stage, train
from medsign_forensics.errors import InputError
from medsign_forensics.reports.findings import FindingKind

REPORTS = ["Left pleural effusion.", "Right pleural effusion.", "No acute cardiopulmonary abnormality."]


def _config(**train_changes: object) -> MiniCxrConfig:
    """The tiny config with a layout adapter, recorded as trained on findings prompts (the stand-in source gives
    its own captions: what matters here is what the exported folder says)."""
    config = tiny_config()
    changes = {"learning_rate": 1e-3, "ema_decay": 0.9, "caption_dropout": 0.1, "steps": 3, **train_changes}
    return replace(config, unet_train=replace(config.unet_train, **changes), layout=LayoutConfig(enabled=True),
                   data=replace(config.data, captions="findings"))


def test_a_reports_layout_puts_each_finding_on_its_stated_side() -> None:
    layouts = report_layouts(REPORTS, seeds=[0, 0, 0], size=256, grid=32).numpy()
    assert layouts.shape == (3, len(KINDS), 32, 32) and layouts.min() >= 0 and layouts.max() <= 1
    effusion = KINDS.index(FindingKind.EFFUSION)
    for row in layouts[:2]:
        assert row[effusion].any() and not np.delete(row, effusion, axis=0).any()  # an effusion, nothing else
    left, right = layouts[0, effusion], layouts[1, effusion]
    # radiographs show the patient's left on the image's right
    assert left[:, 16:].sum() > 0.95 * left.sum() and right[:, :16].sum() > 0.95 * right.sum()
    assert not layouts[2].any()  # a normal report has an empty layout


def test_layout_settings_are_checked_and_left_out_of_configs_that_do_not_use_them() -> None:
    assert "layout" not in tiny_config().to_dict()
    assert _config().to_dict()["layout"] == {"enabled": True, "dropout": 0.2, "res_blocks": 1}
    assert "layout" not in replace(_config(), layout=LayoutConfig()).to_dict()
    assert MiniCxrConfig.from_dict(_config().to_dict()) == _config()
    with pytest.raises(InputError, match="dropout"):
        LayoutConfig(dropout=1.0)


def test_dropped_items_get_no_adapter_features() -> None:
    trainer = UNetTrainer(_config(), _tokenizer(), device=torch.device("cpu"))
    layout = report_layouts(REPORTS[:2], seeds=[0, 1], size=64, grid=8)
    features = adapter_residuals(trainer.adapter, layout, torch.tensor([True, False]))
    assert [tuple(f.shape[1:]) for f in features] == [(16, 8, 8), (32, 4, 4)]  # one per U-Net level
    assert all(f[0].abs().sum() > 0 and not f[1].any() for f in features)
    with pytest.raises(Exception, match="layout"):
        trainer.step(torch.zeros(2, 4, 8, 8), REPORTS[:2], torch.Generator().manual_seed(0))


def _tokenizer():
    from helpers.diffusion import REPORT_TEXTS

    from medsign_forensics.diffusion.tokenizer import train_tokenizer

    return train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1)


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory: pytest.TempPathFactory, grey_model_dir: Path) -> Path:
    """A grounded layout fine-tune of the tiny model, interrupted after step 2 and resumed to step 3."""
    out = tmp_path_factory.mktemp("layout") / "run"
    config = replace(_config(), unet_train=replace(_config().unet_train, grounding=GroundingConfig(0.5, 0.5)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' own runs (conftest), so that results can be compared bit for bit
    try:
        train(config, out, stage=Stage.UNET, steps=2, source=StandInSource(), init_from=grey_model_dir)
        train(config, out, stage=Stage.UNET, resume=True, source=StandInSource())
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_layout_fine_tune_resumes_exactly(tmp_path: Path, grey_model_dir: Path, layout_run: Path) -> None:
    config = replace(_config(), unet_train=replace(_config().unet_train, grounding=GroundingConfig(0.5, 0.5)))
    train(config, tmp_path / "a", stage=Stage.UNET, source=StandInSource(), init_from=grey_model_dir)
    a = torch.load(tmp_path / "a" / "unet" / "checkpoint.pt", weights_only=True)["trainer"]
    b = torch.load(layout_run / "unet" / "checkpoint.pt", weights_only=True)["trainer"]
    assert a["step"] == b["step"] == 3 and a["adapter"].keys() == b["adapter"].keys()
    for name in ("text_encoder", "unet", "adapter"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_the_exported_adapter_loads_is_hashed_and_steers_sampling(layout_run: Path) -> None:
    from diffusers import StableDiffusionPipeline

    folder = layout_run / "model"
    assert "adapter/diffusion_pytorch_model.safetensors" in read_manifest(folder / MANIFEST_NAME)
    model = load_model(folder)
    assert model.adapter is not None and "adapter/diffusion_pytorch_model.safetensors" in model.weights
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Layout adapter" in card and "findings prompt" in card and "| adapter/diffusion_pytorch_model" in card
    StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    layouts = report_layouts(REPORTS[:2], seeds=[0, 0], size=64, grid=8)
    prompts = ["Pleural effusion."] * 2
    steered = sample(model, prompts, seed=[3, 3], steps=2, layout=layouts).images
    plain = sample(model, prompts, seed=[3, 3], steps=2).images
    assert torch.equal(plain[0], plain[1]) and not torch.equal(steered[0], steered[1])


def test_sampling_with_a_layout_is_diffusers_adapter_pipeline(layout_run: Path) -> None:
    from diffusers import StableDiffusionAdapterPipeline

    model = load_model(layout_run / "model")
    layouts = report_layouts(REPORTS[:2], seeds=[0, 1], size=64, grid=8)
    ours = sample(model, REPORTS[:2], seed=[5, 6], steps=3, layout=layouts, output="latents").latents
    components = {k: v for k, v in model.pipeline.components.items() if k != "image_encoder"}
    pipeline = StableDiffusionAdapterPipeline(**components, adapter=model.adapter)
    theirs = pipeline(
        prompt=REPORTS[:2], image=layouts, height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(s) for s in (5, 6)], output_type="latent",
    ).images / model.vae.config.scaling_factor
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_layout_guidance_amplifies_only_empty_layouts_by_default(layout_run: Path) -> None:
    """A normal report's image is sampled as with every layout guided, a report with findings as with none, in
    the same batch; and guiding the empty layout changes that image."""
    layouts = report_layouts(REPORTS, seeds=[0, 0, 0], size=64, grid=8)
    assert guided_shares(layouts, LayoutGuidance.EMPTY).tolist() == [0.0, 0.0, 1.0]
    assert guided_shares(layouts, "all").tolist() == [1.0] * 3 and not guided_shares(layouts, "off").any()
    model = load_model(layout_run / "model")
    prompts = ["left effusion.", "right effusion.", "normal chest radiograph."]

    def latents(policy: str | None) -> torch.Tensor:
        options = {} if policy is None else {"layout_guidance": policy}
        result = sample(model, prompts, seed=[1, 2, 3], steps=2, layout=layouts, output="latents", **options)
        assert result.layout_guidance == (policy or "empty")
        return result.latents

    default, off, every = latents(None), latents("off"), latents("all")
    assert torch.equal(default[:2], off[:2]) and torch.equal(default[2], every[2])
    assert not torch.allclose(default[2], off[2]) and not torch.allclose(default[0], every[0])
    assert sample(model, prompts[:1], seed=1, steps=1, output="latents").layout_guidance == "off"  # no layout
    with pytest.raises(InputError, match="unknown layout guidance"):
        sample(model, prompts, seed=1, steps=1, layout=layouts, layout_guidance="normal")


def test_a_layout_needs_a_model_with_an_adapter_and_one_layout_per_prompt(grey_model, layout_run: Path) -> None:
    layout = torch.zeros(1, len(KINDS), 8, 8)
    with pytest.raises(InputError, match="no layout adapter"):
        sample(grey_model, ["Normal."], seed=0, steps=1, layout=layout)
    model = load_model(layout_run / "model")
    with pytest.raises(InputError, match="one layout"):
        sample(model, ["Normal.", "Normal."], seed=0, steps=1, layout=layout)
    with layout_conditioning(model.unet, model.adapter, layout):
        pass
    assert not model.unet._forward_pre_hooks  # the hook is gone once the block ends
    assert np.isfinite(sample(model, ["Normal."], seed=0, steps=1).images.numpy()).all()


def test_reports_are_given_as_the_model_folder_says(grey_model, layout_run: Path) -> None:
    from medsign_forensics.diffusion.conditioning import condition, sample_reports
    from medsign_forensics.localization.generation import generate_with_maps

    plain = condition(grey_model, REPORTS[:2], 4)
    assert grey_model.prompt_form == "report" and plain.prompts == tuple(REPORTS[:2]) and plain.layout is None
    model = load_model(layout_run / "model")
    given = condition(model, REPORTS[:2], 4)
    assert model.prompt_form == "findings" and given.prompts == ("left effusion.", "right effusion.")
    assert given.layout is not None
    assert torch.equal(given.layout, report_layouts(REPORTS[:2], seeds=[4, 5], size=64, grid=8))
    maps = generate_with_maps(model, REPORTS[:2], seed=4, steps=2, output="latents")
    direct = sample(model, list(given.prompts), seed=4, steps=2, layout=given.layout, output="latents")
    assert torch.equal(maps.sample.latents, direct.latents) and maps.sample.prompts == given.prompts
    assert torch.equal(sample_reports(model, REPORTS[:2], seed=4, steps=2, output="latents").latents, direct.latents)
    assert all(item.a_loc.max() > 0 for item in maps.localizations)  # "effusion" read in the findings prompt
