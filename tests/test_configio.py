"""The one config (de)serialisation (medsign_forensics.configio): every config class, and every shipped config file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pytest

from medsign_forensics.config import REPO_DIR, WEIGHTS_DIR, LossWeights
from medsign_forensics.configio import config_from_dict, config_to_dict
from medsign_forensics.diffusion.configs import MiniCxrConfig, UNetConfig, tiny_config
from medsign_forensics.errors import InputError
from medsign_forensics.evaluate.harness import EvaluationConfig
from medsign_forensics.phantom.classifier import ClassifierConfig
from medsign_forensics.phantom.classifier_train import TrainConfig
from medsign_forensics.provenance import Registry
from medsign_forensics.provenance.layers import latent_layers
from medsign_forensics.watermark.calibration import NullCalibration
from medsign_forensics.watermark.decoder_config import DecoderTrainConfig
from medsign_forensics.watermark.head import HeadConfig
from medsign_forensics.watermark.hidden import HiddenConfig
from medsign_forensics.watermark.latent import LatentConfig
from medsign_forensics.watermark.spectral import SpectralConfig
from medsign_forensics.watermark.train_extractor import ExtractorTrainConfig

CALIBRATION_SET = {"name": "phantoms", "n": 10, "mean_min": 0.4, "mean_max": 0.6, "chi2": 3.5, "chi2_p": 0.5}

# Per class: the default (or smallest valid) config and one that differs in nested, tuple and optional fields.
EXAMPLES = [
    MiniCxrConfig(),
    tiny_config(),
    ExtractorTrainConfig(data="phantom"),
    ExtractorTrainConfig(data="/images", attacks=("none", "jpeg_q50"), model=HiddenConfig(bits=32, strength=0.5)),
    SpectralConfig(),
    SpectralConfig(bits=64, pilots=((3, 5), (7, -2)), fine_rotation=(2.0, 0.5)),
    DecoderTrainConfig(),
    DecoderTrainConfig(dataset="fundus", ablation="no-tv", weights=LossWeights(1.0, 2.0, 3.0, 4.0), lr=1e-4, steps=7),
    HeadConfig(),
    HeadConfig(psnr=40.0, channels=8),
    HiddenConfig(),
    ClassifierConfig(),
    ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), map_stage=None, groups=4),
    TrainConfig(),
    TrainConfig.tiny(),
    NullCalibration.fair(8),
    NullCalibration(bits=2, rate_one_low=(0.4, 0.5), rate_one_high=(0.5, 0.7), sets=(CALIBRATION_SET,), margin_sd=2.0),
    LatentConfig(),
    LatentConfig(channel_factor=2, spatial_factor=2, inversion_steps=10),
]


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json(config):
    text = json.dumps(config.to_dict())
    again = type(config).from_dict(json.loads(text))
    assert again == config
    assert json.dumps(again.to_dict()) == text


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda c: type(c).__name__)
def test_an_unknown_field_is_refused_with_the_class_and_the_field_named(config):
    data = {**config.to_dict(), "mystery_knob": 1}
    with pytest.raises(InputError, match=f"{type(config).__name__}.*unknown field.*mystery_knob"):
        type(config).from_dict(data)


def test_tuple_fields_survive_json_including_tuples_of_tuples():
    spectral = SpectralConfig.from_dict(json.loads(json.dumps(SpectralConfig().to_dict())))
    assert isinstance(spectral.pilots, tuple) and all(isinstance(p, tuple) for p in spectral.pilots)
    assert spectral.pilots == SpectralConfig().pilots and spectral.fine_scale == (0.02, 0.004)
    unet = MiniCxrConfig.from_dict(json.loads(json.dumps(tiny_config().to_dict()))).unet
    assert unet.only_cross_attention == (True, False) and isinstance(unet.block_out_channels, tuple)
    train = TrainConfig.from_dict(json.loads(json.dumps(TrainConfig().to_dict())))
    assert train.augmentation.jpeg_quality == (60, 95) and train.model.labels == ClassifierConfig().labels
    assert SpectralConfig().to_dict()["pilots"][0] == [2, 11]  # lists out, tuples back in


def test_missing_fields_take_the_defaults_and_required_ones_are_named():
    assert MiniCxrConfig.from_dict({"unet_train": {"steps": 5}}) == MiniCxrConfig(
        unet_train=MiniCxrConfig().unet_train.__class__(steps=5))
    assert HeadConfig.from_dict({}) == HeadConfig()
    with pytest.raises(InputError, match="ExtractorTrainConfig has missing field.*data"):
        ExtractorTrainConfig.from_dict({"steps": 3})
    with pytest.raises(InputError, match="NullCalibration has missing field.*margin_sd"):
        NullCalibration.from_dict({k: v for k, v in NullCalibration.fair(4).to_dict().items() if k != "margin_sd"})


def test_wrong_json_types_are_refused_and_only_int_to_float_is_converted():
    psnr = HeadConfig.from_dict({"psnr": 40}).psnr
    assert psnr == 40.0 and isinstance(psnr, float)
    refused = [
        (HeadConfig, {"channels": 8.0}, "HeadConfig.channels has the wrong type"),
        (HeadConfig, {"channels": True}, "HeadConfig.channels has the wrong type"),
        (HeadConfig, {"psnr": "43"}, "HeadConfig.psnr has the wrong type"),
        (SpectralConfig, {"pilots": [[1, 2, 3]]}, re.escape("SpectralConfig.pilots[0] must have 2 entries")),
        (SpectralConfig, {"pilots": "(1, 2)"}, "SpectralConfig.pilots has the wrong type: expected a list"),
        (MiniCxrConfig, {"unet": {"layers": 2}}, "MiniCxrConfig.unet has unknown field.*layers"),
        (MiniCxrConfig, {"unet": [1]}, "MiniCxrConfig.unet must be a JSON object"),
        (MiniCxrConfig, {"scheduler": {"prediction_type": "x0"}}, "prediction_type must be one of"),
        (DecoderTrainConfig, {"ablation": "no-watson"}, "ablation must be one of"),
        (LatentConfig, {"spatial_factor": None}, "spatial_factor has the wrong type"),
        (NullCalibration, [1, 2], "NullCalibration must be a JSON object"),
    ]
    for cls, data, message in refused:
        with pytest.raises(InputError, match=message):
            cls.from_dict(data)


def test_the_class_own_validation_still_runs():
    with pytest.raises(InputError, match="30..60 dB"):
        HeadConfig.from_dict({"psnr": 99.0})
    with pytest.raises(InputError, match="unknown attack"):
        DecoderTrainConfig.from_dict({"attacks": ["sharpen"]})
    with pytest.raises(InputError, match="calibration set"):
        NullCalibration.from_dict({**NullCalibration.fair(2).to_dict(), "sets": [{"name": "x"}]})


def test_derived_fields_are_written_and_checked_not_ignored():
    data = DecoderTrainConfig(dataset="fundus").to_dict()
    assert data["peak_lr"] == 5e-4 and data["effective_weights"] == {"img": 1.9, "msg": 6.0, "tv": 10.0, "pre": 800.0}
    assert DecoderTrainConfig.from_dict({k: v for k, v in data.items() if k != "peak_lr"}) == DecoderTrainConfig(
        dataset="fundus")
    with pytest.raises(InputError, match="peak_lr=0.1, but its fields give 0.0005"):
        DecoderTrainConfig.from_dict({**data, "peak_lr": 0.1})
    with pytest.raises(InputError, match="effective_weights"):
        DecoderTrainConfig.from_dict({**data, "effective_weights": {**data["effective_weights"], "tv": 0.0}})


class Colour(str, Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    pair: tuple[int, float] = (1, 2.0)


@dataclass(frozen=True)
class Outer:
    colour: Colour = Colour.RED
    inner: Inner = field(default_factory=Inner)
    where: Path | None = None
    grid: tuple[tuple[int, ...], ...] = ((1,), (2, 3))


def test_the_helper_serves_any_frozen_dataclass():
    outer = Outer(where=Path("/x"))
    data = config_to_dict(outer)
    assert data == {"colour": "red", "inner": {"pair": [1, 2.0]}, "where": "/x", "grid": [[1], [2, 3]]}
    assert config_from_dict(Outer, json.loads(json.dumps(data))) == outer
    with pytest.raises(InputError, match=re.escape("Outer.grid[1][0] has the wrong type")):
        config_from_dict(Outer, {"grid": [[1], ["a"]]})
    assert config_to_dict(UNetConfig())["only_cross_attention"] == [True, False, False]
    assert config_to_dict(EvaluationConfig(real_data=Path("/data")))["real_data"] == "/data"


# --- every config the repository ships must load, and reload to exactly what was shipped --------------------


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _shipped_configs() -> list[tuple[str, type, dict]]:
    classifier = _json(WEIGHTS_DIR / "classifier" / "config.json")
    deployment = _json(WEIGHTS_DIR / "demo-deployment" / "deployment.json")
    extractor = _json(WEIGHTS_DIR / "extractor" / "extractor.json")
    card = (WEIGHTS_DIR / "mini-cxr" / "MODEL_CARD.md").read_text(encoding="utf-8")
    match = re.search(r"## Config\s+```json\n(.*?)```", card, re.S)
    assert match, "the mini-cxr model card lost its config block"
    shipped = [
        ("classifier/config.json config", ClassifierConfig, classifier["config"]),
        ("classifier/config.json train_config", TrainConfig, classifier["train_config"]),
        ("demo-deployment/deployment.json config", DecoderTrainConfig, deployment["config"]),
        ("demo-deployment/deployment.json decoder.head", HeadConfig, deployment["decoder"]["head"]),
        ("demo-deployment/deployment.json decoder.spectral", SpectralConfig, deployment["decoder"]["spectral"]),
        ("demo-deployment/deployment.json latent.config", LatentConfig, deployment["latent"]["config"]),
        ("extractor/extractor.json config", SpectralConfig, extractor["config"]),
        ("extractor/extractor.json null_calibration", NullCalibration, extractor["null_calibration"]),
        ("mini-cxr/MODEL_CARD.md config", MiniCxrConfig, json.loads(match.group(1))),
    ]
    with Registry.open(REPO_DIR / "keys" / "demo-registry") as registry:
        layers = latent_layers(registry)
    assert layers, "the demo registry holds latent layers"
    shipped += [(f"keys/demo-registry latent layer {pid}", LatentConfig, layer.config) for pid, layer in layers.items()]
    return shipped


SHIPPED = _shipped_configs()


@pytest.mark.parametrize(("where", "cls", "data"), SHIPPED, ids=[s[0] for s in SHIPPED])
def test_every_shipped_config_loads_strictly_and_reloads_unchanged(where, cls, data):
    config = cls.from_dict(data)
    assert config.to_dict() == data, f"{where} does not survive a strict load"
