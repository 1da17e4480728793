from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from medsign_forensics.diffusion.configs import (
    GroundingTarget,
    MiniCxrConfig,
    PredictionType,
    build_text_encoder,
    build_unet,
    build_vae,
    default_config,
    load_config,
    tiny_config,
)
from medsign_forensics.errors import InputError


def _fp16_bytes(module) -> int:
    return 2 * sum(p.numel() for p in module.parameters())


def test_default_fits_the_shipping_limits() -> None:
    config = default_config()
    assert (config.image_size, config.latent_size, config.image_channels) == (256, 32, 1)
    sizes = [
        _fp16_bytes(build_vae(config)),
        _fp16_bytes(build_unet(config)),
        _fp16_bytes(
            build_text_encoder(config, vocab_size=config.tokenizer.vocab_size + 512, bos_token_id=0, eos_token_id=1)
        ),
    ]
    assert all(size < 16 * 2**20 for size in sizes)
    assert sum(sizes) <= 30_000_000


def test_default_unet_has_cross_attention_at_every_level() -> None:
    unet = build_unet(default_config())
    cross = {name.split(".attentions")[0] for name, _ in unet.named_modules() if name.endswith("attn2")}
    assert {"down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block"} <= cross
    assert unet.config.in_channels == 4 and unet.config.sample_size == 32


def test_greyscale_vae_downsamples_by_eight() -> None:
    vae = build_vae(default_config())
    assert vae.config.in_channels == vae.config.out_channels == 1
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8


def test_round_trip_through_dict() -> None:
    for config in (default_config(), tiny_config()):
        assert MiniCxrConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_named_and_file_configs(tmp_path: Path) -> None:
    assert load_config("tiny") == tiny_config()
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps({"base": "tiny", "unet_train": {"steps": 7}, "scheduler": {"prediction_type": "epsilon"}})
    )
    config = load_config(path)
    assert config.unet_train.steps == 7 and config.scheduler.prediction_type is PredictionType.EPSILON
    assert config.vae == tiny_config().vae


@pytest.mark.parametrize(
    "content",
    [{"unet_train": {"stepz": 1}}, {"unet": {"block_out_channels": 3}}, {"scheduler": {"prediction_type": "x"}}, [1]],
)
def test_bad_config_files(tmp_path: Path, content) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError):
        load_config(path)


def test_unknown_name() -> None:
    with pytest.raises(InputError, match="no such config file"):
        load_config("huge")


def test_indivisible_channels_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base": "tiny", "unet": {"block_out_channels": [12, 32]}}))
    with pytest.raises(InputError, match="does not divide"):
        build_unet(load_config(path))


def test_configs_without_grounding_load_with_it_off() -> None:
    """mini-cxr 0.1.0's config (from its model card) predates the grounding fields: it loads, with grounding off,
    and is written back unchanged, so run folders begun then still resume."""
    from medsign_forensics.diffusion.configs import GroundingConfig

    shipped = json.loads((Path(__file__).parent / "data" / "mini-cxr-0.1.0-config.json").read_text())
    assert "grounding" not in shipped["unet_train"]
    config = MiniCxrConfig.from_dict(shipped)
    assert config.unet_train.grounding == GroundingConfig() and not config.unet_train.grounding.enabled
    assert config.to_dict() == shipped  # written as before: run folders begun earlier resume, cards are unchanged
    recipe = load_config(Path(__file__).parents[2] / "benchmarks" / "recipes" / "mini-cxr-grounded-cpu.json")
    assert recipe.unet_train.grounding.enabled
    assert recipe.to_dict()["unet_train"]["grounding"]["token_weight"] == recipe.unet_train.grounding.token_weight
    assert MiniCxrConfig.from_dict(recipe.to_dict()) == recipe
    ablation = load_config(Path(__file__).parents[2] / "benchmarks" / "recipes" / "mini-cxr-finetune-cpu.json")
    off = replace(recipe.unet_train, grounding=GroundingConfig())
    assert ablation == replace(recipe, unet_train=off)  # the ungrounded control differs in the switch alone
    assert (recipe.unet, recipe.vae, recipe.text_encoder, recipe.tokenizer) == (
        config.unet, config.vae, config.text_encoder, config.tokenizer
    )  # the fine-tune recipe has the shipped architecture, so --init-from loads it strictly
    assert "lesion_weight" not in recipe.to_dict()["unet_train"]["grounding"]  # the pilot's run folder resumes
    assert "captions" not in recipe.to_dict()["data"]
    for name, lesion, captions in (("lesion", 8.0, "report"), ("findings", 4.0, "findings")):
        later = load_config(Path(__file__).parents[2] / "benchmarks" / "recipes" / f"mini-cxr-{name}-cpu.json")
        assert (later.unet_train.grounding.lesion_weight, later.data.captions) == (lesion, captions)
        assert MiniCxrConfig.from_dict(later.to_dict()) == later
        assert later.unet == config.unet


def test_a_cool_down_recipe_is_the_layout_recipe_with_a_decaying_rate(tmp_path: Path) -> None:
    """``lr_floor`` below 1 is written (and read back); at its default it is left out, so earlier run folders
    resume; outside [0, 1] it is a config error."""
    recipes = Path(__file__).parents[2] / "benchmarks" / "recipes"
    layout = load_config(recipes / "mini-cxr-layout-cpu.json")
    cooldown = load_config(recipes / "mini-cxr-layout-cooldown-cpu.json")
    assert "lr_floor" not in layout.to_dict()["unet_train"] and layout.unet_train.lr_floor == 1.0
    assert cooldown.to_dict()["unet_train"]["lr_floor"] == 0.0
    assert MiniCxrConfig.from_dict(cooldown.to_dict()) == cooldown
    held = replace(cooldown.unet_train, lr_floor=1.0, steps=layout.unet_train.steps)
    assert replace(cooldown, unet_train=held) == layout
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base": "tiny", "unet_train": {"lr_floor": 1.5}}))
    with pytest.raises(InputError, match="lr_floor"):
        load_config(path)


def test_the_shipped_model_card_gives_the_layout_recipe() -> None:
    """The shipped mini-cxr (0.2.0) was trained with the layout recipe: its card's config is that recipe's."""
    from medsign_forensics.diffusion.loader import DEFAULT_MODEL_DIR

    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    shipped = json.loads(card.split("## Config")[1].split("```json")[1].split("```")[0])
    recipe = load_config(Path(__file__).parents[2] / "benchmarks" / "recipes" / "mini-cxr-layout-cpu.json")
    assert MiniCxrConfig.from_dict(shipped) == recipe and recipe.layout.enabled
    assert recipe.data.captions == "findings" and recipe.unet_train.grounding.enabled


def test_negative_grounding_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base": "tiny", "unet_train": {"grounding": {"token_weight": -1}}}))
    with pytest.raises(InputError, match="grounding weights must be >= 0"):
        load_config(path)


def test_the_peak_grounding_recipe_is_the_layout_recipe_with_peak_targets(tmp_path: Path) -> None:
    """``target`` is written only when it is not ``area`` (earlier run folders resume); an unknown target is a
    config error; the peak probe differs from the shipped layout recipe in its target and its decaying rate."""
    recipes = Path(__file__).parents[2] / "benchmarks" / "recipes"
    layout = load_config(recipes / "mini-cxr-layout-cpu.json")
    peak = load_config(recipes / "mini-cxr-peak-grounding-cpu.json")
    assert "target" not in layout.to_dict()["unet_train"]["grounding"] and layout.unet_train.grounding.target == "area"
    assert peak.to_dict()["unet_train"]["grounding"]["target"] == "peak"
    assert MiniCxrConfig.from_dict(peak.to_dict()) == peak
    area = replace(peak.unet_train.grounding, target="area")
    same = replace(peak.unet_train, grounding=area, lr_floor=1.0, steps=layout.unet_train.steps)
    assert replace(peak, unet_train=same) == layout
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base": "tiny", "unet_train": {"grounding": {"target": "centre"}}}))
    with pytest.raises(InputError, match="grounding.target must be one of"):
        load_config(path)


def test_the_eight_channel_grounding_pair_differs_in_the_target_alone() -> None:
    """The A/B fine-tunes of the 8-channel line (v3-norm) differ only in the grounding target (and the third in
    how often the layout is dropped), and have the v3-norm recipe's architecture, so all continue its export with
    --init-from."""
    recipes = Path(__file__).parents[2] / "benchmarks" / "recipes"
    v3 = load_config(recipes / "mini-cxr-v3-norm-cpu.json")
    peak = load_config(recipes / "mini-cxr-v3-norm-peak-cpu.json")
    area = load_config(recipes / "mini-cxr-v3-norm-area-cpu.json")
    assert (peak.unet_train.grounding.target, area.unet_train.grounding.target) == ("peak", "area")
    as_area = replace(peak.unet_train, grounding=replace(peak.unet_train.grounding, target=GroundingTarget.AREA))
    assert replace(peak, unet_train=as_area) == area
    assert (peak.unet, peak.vae, peak.text_encoder, peak.layout) == (v3.unet, v3.vae, v3.text_encoder, v3.layout)
    nolayout = load_config(recipes / "mini-cxr-v3-norm-peak-nolayout-cpu.json")
    assert nolayout.layout.dropout == 0.95 and replace(nolayout, layout=peak.layout) == peak
