import json

import pytest
import torch
from safetensors.torch import load_file

from medsign_forensics.errors import InputError
from medsign_forensics.fileio import sha256_file
from medsign_forensics.watermark.extractor_io import load_encoder, load_extractor
from medsign_forensics.watermark.hidden import HiddenConfig
from medsign_forensics.watermark.train_extractor import ExtractorTrainConfig, train_extractor

TINY = HiddenConfig(
    bits=32, extractor_stem_channels=8, extractor_channels=32, extractor_blocks=1, encoder_tile=8,
)


def tiny_config(data, **changes):
    values = dict(data=str(data), steps=4, batch=2, size=32, attacks=("none", "jpeg_q50", "rotate_25"),
                  log_every=1, checkpoint_every=2, model=TINY, whiten_size=32, recalibrate_batches=3)
    values.update(changes)
    return ExtractorTrainConfig(**values)


def test_training_writes_a_complete_run_folder(image_folder, tmp_path):
    out = tmp_path / "run"
    events = []
    result = train_extractor(tiny_config(image_folder), out, progress=events.append)
    assert result.steps == 4 and [e.done for e in events if e.metrics] == [1, 2, 3, 4]
    assert all(0 <= e.metrics["bit_accuracy"] <= 1 and e.total == 4 for e in events)
    for name in ("extractor.safetensors", "extractor.json", "encoder.safetensors", "encoder.json",
                 "config.json", "SHA256SUMS", "train_log.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert all(0 <= entry["bit_accuracy"] <= 1 and entry["loss"] > 0 for entry in log)
    assert ExtractorTrainConfig.from_dict(json.loads((out / "config.json").read_text())) == tiny_config(image_folder)
    assert result.extractor_sha256 == sha256_file(out / "extractor.safetensors")
    assert f"{result.extractor_sha256}  extractor.safetensors" in (out / "SHA256SUMS").read_text()
    assert load_extractor(out).config == TINY and load_encoder(out).config == TINY


def test_batchnorm_statistics_are_recalibrated_at_the_working_size(image_folder, tmp_path):
    from medsign_forensics.watermark.train_extractor import _Trainer, make_source, recalibrate_batchnorm

    trainer = _Trainer(tiny_config(image_folder), tmp_path)
    norms = [m for m in trainer.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    recalibrate_batchnorm(trainer, make_source(trainer.config))
    assert all(int(m.num_batches_tracked) == 3 for m in norms)  # a plain mean over exactly the asked batches
    assert all(m.momentum == 0.1 for m in norms) and not trainer.extractor.training
    assert any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms))


def test_interrupted_run_resumes_exactly(image_folder, tmp_path):
    straight = tmp_path / "straight"
    train_extractor(tiny_config(image_folder), straight)

    class Stop(Exception):
        pass

    def crash_at_step_3(event):
        if event.done == 3:
            raise Stop

    broken = tmp_path / "broken"
    with pytest.raises(Stop):
        train_extractor(tiny_config(image_folder), broken, progress=crash_at_step_3)
    with pytest.raises(InputError, match="--resume"):
        train_extractor(tiny_config(image_folder), broken)
    train_extractor(tiny_config(image_folder), broken, resume=True)
    a, b = load_file(str(straight / "extractor.safetensors")), load_file(str(broken / "extractor.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (broken / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the line logged after the last checkpoint was replaced, not duplicated


def test_resume_with_different_settings_is_refused(image_folder, tmp_path):
    out = tmp_path / "run"
    train_extractor(tiny_config(image_folder, steps=2), out)
    with pytest.raises(InputError, match="different settings"):
        train_extractor(tiny_config(image_folder, steps=4, lr=0.01), out, resume=True)
    result = train_extractor(tiny_config(image_folder, steps=3), out, resume=True)  # more steps is fine
    assert result.steps == 3


def test_whitening_is_fitted_after_training(tmp_path, make_folder):
    folder = make_folder("many", 40, 48)
    out = tmp_path / "run"
    result = train_extractor(tiny_config(folder, steps=2, whiten_images=40, whiten_size=48), out)
    assert result.whitening is not None and result.whitening["n_samples"] == 40
    manifest = json.loads((out / "extractor.json").read_text())
    assert manifest["whitening"]["covariance"].endswith("N - 1")
    assert load_extractor(out).whitened


def test_clean_steps_train_without_attacks_first(image_folder, tmp_path):
    out = tmp_path / "run"
    attacks = ("jpeg_q50", "rotate_25")
    train_extractor(tiny_config(image_folder, attacks=attacks, clean_steps=2), out)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [set(entry["per_attack_accuracy"]) for entry in log[:2]] == [{"none"}, {"none"}]
    assert all(set(entry["per_attack_accuracy"]) <= set(attacks) for entry in log[2:])


def test_config_checks(image_folder):
    with pytest.raises(InputError, match="unknown attack"):
        tiny_config(image_folder, attacks=("jpeg_q50", "sharpen"))
    with pytest.raises(InputError, match="more than 32"):
        tiny_config(image_folder, whiten_images=10)
    with pytest.raises(InputError, match="clean_steps"):
        tiny_config(image_folder, clean_steps=5)
