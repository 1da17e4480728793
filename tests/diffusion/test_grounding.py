"""Token-grounded cross-attention (issue 15): the grounding loss trains the finding words' attention onto their
lesion masks, is exactly absent when its weights are 0, and resumes exactly."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.diffusion import REPORT_TEXTS, StandInSource

from medsign_forensics.diffusion.base_trainers import UNetTrainer
from medsign_forensics.diffusion.configs import GroundingConfig, MiniCxrConfig, tiny_config
from medsign_forensics.diffusion.grounding import GroundingCapture, GroundingTargets, layer_losses, lesion_cells
from medsign_forensics.diffusion.grounding_data import KINDS, CaptionWords, GroundingData, MaskCache
from medsign_forensics.diffusion.tokenizer import train_tokenizer
from medsign_forensics.diffusion.train_base import Stage, train
from medsign_forensics.errors import InputError
from medsign_forensics.localization import CrossAttentionCapture
from medsign_forensics.reports.findings import FindingKind

CAPTIONS = ["Left pleural effusion.", "Right pleural effusion."]


def _config(token: float = 1.0, pixel: float = 1.0, lesion: float = 0.0, **train_changes: object) -> MiniCxrConfig:
    config = tiny_config()
    changes = {"learning_rate": 2e-3, "ema_decay": None, "caption_dropout": 0.0, **train_changes}
    grounding = GroundingConfig(token_weight=token, pixel_weight=pixel, lesion_weight=lesion)
    return replace(config, unet_train=replace(config.unet_train, grounding=grounding, **changes))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(REPORT_TEXTS, vocab_size=700, min_frequency=1)


def _planted() -> np.ndarray:
    """A lesion in the top-left quarter of the 8x8 latent, where nothing in the (random) latents points."""
    mask = np.zeros((8, 8), np.float32)
    mask[:4, :4] = 1.0
    return mask


def _targets(tokenizer, captions: list[str] = CAPTIONS) -> GroundingTargets:
    words = CaptionWords(tokenizer, locations=True)
    return GroundingTargets.build([[(positions, _planted()) for positions, _ in words(c)] for c in captions], 8)


def _trainer(config: MiniCxrConfig, tokenizer) -> UNetTrainer:
    torch.manual_seed(0)
    return UNetTrainer(config, tokenizer, device=torch.device("cpu"))


LATENTS = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))


def _inside_share(trainer: UNetTrainer, tokenizer, targets: GroundingTargets) -> float:
    """What the localization map reads: the grounded tokens' captured attention (mean over layers, as A_avg
    before scaling) inside the planted mask, as a share of the token's total, at one noise level."""
    noisy = trainer.scheduler.add_noise(LATENTS, torch.randn(LATENTS.shape, generator=torch.Generator().manual_seed(5)),
                                        torch.tensor([400, 400]))
    with torch.no_grad(), CrossAttentionCapture(trainer.unet, conditional_batch=2) as capture:
        trainer.unet(noisy, torch.tensor([400, 400]), trainer.encode_captions(CAPTIONS))
    shares = []
    for layer in capture.result().layers.values():
        maps = layer.sums[targets.items, targets.positions]  # (E, h, w)
        masks = torch.nn.functional.adaptive_avg_pool2d(targets.masks[:, None], maps.shape[-2:])[:, 0]
        shares.append(((maps * masks).sum((1, 2)) / maps.sum((1, 2))).mean().item())
    return float(np.mean(shares))


def test_targets_take_the_finding_and_location_words(tokenizer) -> None:
    words = CaptionWords(tokenizer, locations=True)("Left pleural effusion. No pneumothorax.")
    assert [kinds for _, kinds in words] == [frozenset({FindingKind.EFFUSION})] * 2  # "left", "effusion"
    assert all(positions and 0 not in positions for positions, _ in words)
    assert CaptionWords(tokenizer, locations=False)("Left pleural effusion.")[0][0] == words[1][0]
    assert CaptionWords(tokenizer, locations=True)("") == ()
    targets = _targets(tokenizer, ["Left pleural effusion.", "No acute abnormality.", ""])
    assert set(targets.items.tolist()) == {0}  # the normal and the dropped caption ground nothing


def test_layer_losses_are_zero_inside_and_high_outside() -> None:
    mask = torch.zeros(1, 16)
    mask[0, :4] = 1
    inside = torch.zeros(1, 16)
    inside[0, :4] = 0.25
    token, pixel, share = layer_losses(inside, mask)
    assert token.item() == pytest.approx(0.0, abs=1e-9) and share.item() == pytest.approx(1.0)
    assert pixel.item() < 1e-4
    outside = inside.flip(-1)
    token, pixel, share = layer_losses(outside, mask)
    assert token.item() == pytest.approx(1.0) and share.item() == pytest.approx(0.0) and pixel.item() > 5


def test_grounding_loss_decreases_and_the_map_moves_to_the_planted_mask(tokenizer) -> None:
    targets = _targets(tokenizer)
    trainer = _trainer(_config(), tokenizer)

    def grounding_loss() -> float:
        with torch.no_grad():
            parts = trainer.loss(LATENTS, CAPTIONS, torch.Generator().manual_seed(0), targets)[1]
        return parts["token_loss"] + parts["pixel_loss"]

    loss_before, share_before = grounding_loss(), _inside_share(trainer, tokenizer, targets)
    for _ in range(12):
        trainer.step(LATENTS, CAPTIONS, torch.Generator().manual_seed(0), targets)
    assert grounding_loss() < 0.7 * loss_before
    share_after = _inside_share(trainer, tokenizer, targets)
    assert share_before < 0.4 and share_after > share_before + 0.25  # the mask is a quarter of the latent
    # the same steps without grounding do not move the map there
    plain = _trainer(_config(0.0, 0.0), tokenizer)
    for _ in range(12):
        plain.step(LATENTS, CAPTIONS, torch.Generator().manual_seed(0), targets)
    assert _inside_share(plain, tokenizer, targets) < share_after - 0.2


def _speck() -> np.ndarray:
    """A lesion smaller than a latent cell (a granuloma): 0.15 of one cell of the 8x8 latent."""
    mask = np.zeros((8, 8), np.float32)
    mask[1, 2] = 0.15
    return mask


def test_peak_targets_give_a_sub_cell_lesion_its_cell(tokenizer) -> None:
    """Under ``area`` a speck's target is its tiny area share on every layer's grid (less on coarse ones); under
    ``peak`` its fullest cell is 1 on every grid, and a large lesion's target is unchanged on the latent's grid."""
    targets = GroundingTargets.build([[((1,), _speck()), ((2,), _planted())]], 8)
    trainer = _trainer(_config(), tokenizer)
    area, peak = GroundingCapture(trainer.unet, targets), GroundingCapture(trainer.unet, targets, peak=True)
    for positions in (64, 16, 4):
        assert area.masks_for(positions)[0].max().item() == pytest.approx(0.15 * positions / 64)
        assert peak.masks_for(positions).amax(1).tolist() == pytest.approx([1.0, 1.0])
    assert torch.equal(peak.masks_for(64)[1], area.masks_for(64)[1])


def test_zero_weights_are_exactly_the_ungrounded_step(tokenizer) -> None:
    base = tiny_config()
    today = _trainer(replace(base, unet_train=replace(base.unet_train, learning_rate=2e-3)), tokenizer)
    zero = _trainer(_config(0.0, 0.0, ema_decay=base.unet_train.ema_decay, caption_dropout=0.1), tokenizer)
    assert zero.config.unet_train == replace(base.unet_train, learning_rate=2e-3)  # defaults: grounding off
    targets = _targets(tokenizer)
    for step in range(2):
        a = today.step(LATENTS, CAPTIONS, torch.Generator().manual_seed(step))
        b = zero.step(LATENTS, CAPTIONS, torch.Generator().manual_seed(step), targets)
        assert a == b  # the same loss, and no grounding terms
    for name, module in today.modules.items():
        other = zero.modules[name].state_dict()
        assert all(torch.equal(value, other[key]) for key, value in module.state_dict().items())
    assert all(torch.equal(v, zero.ema.shadow[k]) for k, v in today.ema.shadow.items())  # type: ignore[union-attr]


def test_lesion_cells_are_each_items_union_of_its_grounded_masks(tokenizer) -> None:
    targets = _targets(tokenizer, ["Left pleural effusion.", "No acute abnormality.", "Right effusion."])
    cells = lesion_cells(targets, 3)
    assert torch.equal(cells[0], torch.from_numpy(_planted())) and torch.equal(cells[2], cells[0])
    assert not cells[1].any()  # a normal caption weights nothing
    assert not lesion_cells(_targets(tokenizer, ["No acute abnormality."]), 1).any()


def test_lesion_weight_counts_the_error_inside_the_lesion_more(tokenizer) -> None:
    """Only the lesion-weighted denoising term changes the loss: with no grounded words it is the plain loss,
    and with a lesion it adds w * (the squared error inside the mask) to the plain per-item error."""
    targets = _targets(tokenizer)
    weighted = _trainer(_config(0.0, 0.0, 3.0, min_snr_gamma=None), tokenizer)
    plain = _trainer(_config(0.0, 0.0, min_snr_gamma=None), tokenizer)
    loss_w, parts_w = weighted.loss(LATENTS, CAPTIONS, torch.Generator().manual_seed(0), targets)
    loss_p, parts_p = plain.loss(LATENTS, CAPTIONS, torch.Generator().manual_seed(0), targets)
    assert parts_w["mse"] == parts_p["mse"] and "token_loss" not in parts_w
    assert loss_w.item() > loss_p.item() * 1.2  # the planted lesion is a quarter of the latent, weighted 4x
    normal = ["No acute abnormality.", ""]
    a = weighted.loss(LATENTS, normal, torch.Generator().manual_seed(0), _targets(tokenizer, normal))[0]
    b = plain.loss(LATENTS, normal, torch.Generator().manual_seed(0), _targets(tokenizer, normal))[0]
    assert a.item() == b.item()
    with pytest.raises(InputError, match="lesion_weight"):
        GroundingConfig(lesion_weight=-1.0)


def test_grounding_without_words_is_the_plain_loss(tokenizer) -> None:
    grounded, plain = _trainer(_config(), tokenizer), _trainer(_config(0.0, 0.0), tokenizer)
    normal = ["No acute abnormality.", ""]
    empty = _targets(tokenizer, normal)
    a = grounded.loss(LATENTS, normal, torch.Generator().manual_seed(0), empty)
    b = plain.loss(LATENTS, normal, torch.Generator().manual_seed(0), empty)
    assert a[0].item() == b[0].item() and a[1] == {**b[1], "grounded_tokens": 0.0}


def test_mask_cache_and_batch_targets(tmp_path: Path, tokenizer) -> None:
    source = StandInSource(count=3)
    cache = MaskCache(tmp_path, count=3, size=64, grid=8)
    cache.build(source, renders_per_report=1, seed=0, chunk=2)
    masks = cache.images()
    effusion = KINDS.index(FindingKind.EFFUSION)
    expected = source.masks(0, seed=0, size=64, grid=8)[FindingKind.EFFUSION]
    assert np.abs(masks[0, effusion] / 255 - expected).max() <= 0.5 / 255
    assert not masks[2].any() and masks[0].sum() == masks[0, effusion].sum()
    data = GroundingData(masks, CaptionWords(tokenizer, locations=True), grid=8)
    targets = data.targets([0, 2], ["Left pleural effusion.", "Left pleural effusion."])
    assert set(targets.items.tolist()) == {0}  # render 2 drew no effusion, so its words are not grounded
    with pytest.raises(Exception, match="other reports or settings"):
        MaskCache(tmp_path, count=3, size=64, grid=4).build(source, renders_per_report=1, seed=0)


def _state(run: Path) -> dict:
    return torch.load(run / "unet" / "checkpoint.pt", weights_only=True)["trainer"]


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_grounded_fine_tune_resumes_exactly(tmp_path: Path, grey_model_dir: Path) -> None:
    """Interrupted after step 2 (and once before any checkpoint), then resumed: the next step is the
    uninterrupted run's, weights, optimiser and EMA alike."""
    config = _config(0.5, 0.5, learning_rate=1e-3, ema_decay=0.9, caption_dropout=0.1, steps=3)
    source = StandInSource()
    train(config, tmp_path / "a", stage=Stage.UNET, source=source, init_from=grey_model_dir)
    train(config, tmp_path / "b", stage=Stage.UNET, steps=2, source=source, init_from=grey_model_dir)
    train(config, tmp_path / "b", stage=Stage.UNET, resume=True, source=source)
    train(config, tmp_path / "c", stage=Stage.UNET, steps=0, source=source, init_from=grey_model_dir)
    train(config, tmp_path / "c", stage=Stage.UNET, resume=True, source=source)
    a = _state(tmp_path / "a")
    assert a["step"] == 3 and _equal(a, _state(tmp_path / "b")) and _equal(a, _state(tmp_path / "c"))
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if e.get("stage") == "unet"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all("grounded_tokens" in e for e in steps)
    assert any(e["grounded_tokens"] > 0 and "token_loss" in e for e in steps)
    card = (tmp_path / "b" / "model" / "MODEL_CARD.md").read_text()
    assert "fine-tuned" in card and "Initial model: mini-cxr-tiny" in card and "L_token weight 0.5" in card


def test_a_fine_tune_starts_from_the_given_weights(tmp_path: Path, grey_model_dir: Path, grey_model) -> None:
    from medsign_forensics.diffusion import load_model

    config = _config(0.0, 0.0, steps=0)
    train(config, tmp_path / "run", stage=Stage.UNET, source=StandInSource(), init_from=grey_model_dir)
    assert not (tmp_path / "run" / "unet" / "checkpoint.pt").exists()  # no step taken: the export is the start
    assert load_model(tmp_path / "run" / "model").weights_sha256 == grey_model.weights_sha256  # fp16->fp32->fp16
    with pytest.raises(InputError, match="stage B only"):
        train(config, tmp_path / "run", stage=Stage.VAE, resume=True, source=StandInSource())
    train(config, tmp_path / "own", stage=Stage.ALL, steps=1, source=StandInSource())
    with pytest.raises(InputError, match="own tokenizer, unet/checkpoint.pt"):
        train(config, tmp_path / "own", stage=Stage.UNET, resume=True, source=StandInSource(), init_from=grey_model_dir)


def test_a_run_with_its_own_vae_keeps_it_and_restarts_the_latent_convolutions(
    tmp_path: Path, grey_model_dir: Path, grey_model
) -> None:
    """Stage A first, then --init-from: the run's VAE stays, the U-Net's inner weights come from the initial
    model, and its first and last convolutions (reading and writing the new latent) from the config."""
    from medsign_forensics.diffusion import load_model
    from medsign_forensics.diffusion.base_trainers import UNetTrainer
    from medsign_forensics.diffusion.tokenizer import load_tokenizer

    config = _config(0.0, 0.0, steps=0)
    wide = replace(config, vae=replace(config.vae, latent_channels=8))
    out = tmp_path / "run"
    train(wide, out, stage=Stage.VAE, steps=1, source=StandInSource())
    shutil.rmtree(out / "vae" / "final")  # as if stopped before stage A's end
    with pytest.raises(InputError, match="no final VAE yet"):
        train(wide, out, stage=Stage.UNET, resume=True, source=StandInSource(), init_from=grey_model_dir)
    train(wide, out, stage=Stage.VAE, resume=True, source=StandInSource())
    own_vae = (out / "vae" / "final" / "diffusion_pytorch_model.safetensors").read_bytes()
    train(wide, out, stage=Stage.UNET, resume=True, source=StandInSource(), init_from=grey_model_dir)
    assert (out / "vae" / "final" / "diffusion_pytorch_model.safetensors").read_bytes() == own_vae
    assert json.loads((out / "init.json").read_text())["own_vae"] is True
    model = load_model(out / "model")
    assert model.vae.config.latent_channels == 8 and model.unet.config.in_channels == 8
    start = UNetTrainer(wide, load_tokenizer(out / "tokenizer"), device=torch.device("cpu")).unet.state_dict()
    exported, initial = model.unet.state_dict(), grey_model.unet.state_dict()
    for key in exported:
        expected = start[key] if key.split(".")[0] in ("conv_in", "conv_out") else initial[key]
        assert torch.equal(exported[key], expected.half().float()), key
    assert "its VAE is this run's own" in (out / "model" / "MODEL_CARD.md").read_text()


def test_a_fine_tune_needs_the_initial_models_architecture(tmp_path: Path, grey_model_dir: Path) -> None:
    config = tiny_config()
    wider = replace(config, unet=replace(config.unet, block_out_channels=(16, 48)))
    with pytest.raises(Exception, match="architecture"):
        train(wider, tmp_path / "run", stage=Stage.UNET, steps=1, source=StandInSource(), init_from=grey_model_dir)
