from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.diffusion import StandInSource

from medsign_forensics.diffusion.configs import LesionFinetuneConfig, MiniCxrConfig, tiny_config
from medsign_forensics.diffusion.layout import KINDS
from medsign_forensics.diffusion.train_base import Stage, train
from medsign_forensics.diffusion.vae_lesions import LesionCrops, lesion_terms, lesion_weights
from medsign_forensics.errors import InputError
from medsign_forensics.reports.findings import FindingKind


def _two_lesions() -> np.ndarray:
    bits = np.zeros((64, 64), np.uint16)
    bits[10:12, 10:12] = 1 << KINDS.index(FindingKind.GRANULOMA)  # a 4-pixel granuloma
    bits[30:50, 30:50] = 1 << KINDS.index(FindingKind.CONSOLIDATION)  # a 400-pixel consolidation
    return bits


def test_each_lesion_weighs_as_much_as_any_other() -> None:
    weights = lesion_weights(_two_lesions())
    assert weights[10:12, 10:12].sum() == pytest.approx(1.0)
    assert weights[30:50, 30:50].sum() == pytest.approx(1.0)
    assert weights.sum() == pytest.approx(2.0)
    inside_a_lung = _two_lesions()
    inside_a_lung[5:60, 5:60] |= 1 << KINDS.index(FindingKind.EMPHYSEMA)  # a diffuse finding around both
    assert lesion_weights(inside_a_lung)[10:12, 10:12].sum() == pytest.approx(1.0)  # still a lesion of its own


def test_a_missed_lesion_and_a_made_up_dot_both_cost() -> None:
    weights = torch.from_numpy(lesion_weights(_two_lesions()))[None, None]
    missed = torch.zeros(1, 1, 64, 64)
    missed[..., 10:12, 10:12] = 1.0  # the granuloma is gone: error inside it only
    lesion, peaks = lesion_terms(missed, weights)
    assert lesion.item() == pytest.approx(0.5) and peaks.item() == 0.0
    invented = torch.zeros(1, 1, 64, 64)
    invented[..., 55, 5] = 1.0  # a dot far from every lesion
    lesion, peaks = lesion_terms(invented, weights)
    assert lesion.item() == 0.0 and peaks.item() == pytest.approx(1 / 64)
    near = torch.zeros(1, 1, 64, 64)
    near[..., 13, 13] = 1.0  # beside the granuloma: its rim, not a made-up finding
    assert lesion_terms(near, weights)[1].item() == 0.0


def test_centred_crops_hold_a_lesion() -> None:
    images = np.zeros((3, 64, 64), np.uint8)
    lesions = np.stack([np.zeros((64, 64), np.uint16), _two_lesions(), np.zeros((64, 64), np.uint16)])
    crops = LesionCrops(images, lesions, crop=16, centred=1.0)
    batch, weights = crops.batch(12, torch.Generator().manual_seed(0))
    assert batch.shape == weights.shape == (12, 1, 16, 16)
    assert all(w.sum() > 0 for w in weights)
    random = LesionCrops(images, lesions, crop=16, centred=0.0).batch(40, torch.Generator().manual_seed(0))[1]
    assert any(w.sum() == 0 for w in random)


def _lesion_config(steps: int = 2) -> MiniCxrConfig:
    config = tiny_config()
    lesions = LesionFinetuneConfig(steps=steps, learning_rate=1e-5, batch_size=2)
    return replace(config, vae_train=replace(config.vae_train, lesions=lesions))


def test_the_lesion_phase_follows_stage_a(tmp_path: Path) -> None:
    result = train(_lesion_config(), tmp_path / "run", stage=Stage.VAE, source=StandInSource())
    assert result.stages[0].step == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert ["lesion" in e for e in steps] == [False, False, True, True]
    assert [e["lr"] for e in steps[2:]] == [1e-5, 1e-5]
    bits = np.fromfile(tmp_path / "run" / "lesions.u16", dtype=np.uint16)
    assert bits.size == 6 * 64 * 64 and set(np.unique(bits)) == {0, 1 << KINDS.index(FindingKind.EFFUSION)}
    assert [e["step"] for e in log if e.get("event") == "finished"] == [4]


def test_without_a_lesion_phase_more_steps_stay_plain(tmp_path: Path) -> None:
    train(tiny_config(), tmp_path / "run", stage=Stage.VAE, steps=3, source=StandInSource())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [("lesion" in e) for e in log if "loss" in e] == [False, False, False]
    assert not (tmp_path / "run" / "lesions.u16").exists()


def test_a_resumed_lesion_phase_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    source = StandInSource()
    train(_lesion_config(), tmp_path / "a", stage=Stage.VAE, source=source)
    train(_lesion_config(), tmp_path / "b", stage=Stage.VAE, steps=3, source=source)
    train(_lesion_config(), tmp_path / "b", stage=Stage.VAE, resume=True, source=source)
    a = torch.load(tmp_path / "a" / "vae" / "checkpoint.pt", weights_only=True)["trainer"]["vae"]
    b = torch.load(tmp_path / "b" / "vae" / "checkpoint.pt", weights_only=True)["trainer"]["vae"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_lesion_phase_is_written_only_when_used(tmp_path: Path) -> None:
    assert "lesions" not in tiny_config().to_dict()["vae_train"]  # earlier run folders resume
    written = _lesion_config(7).to_dict()
    assert written["vae_train"]["lesions"]["steps"] == 7
    assert MiniCxrConfig.from_dict(written).vae_train.total_steps == tiny_config().vae_train.steps + 7
    with pytest.raises(InputError, match="centred"):
        LesionFinetuneConfig(centred=1.5)
