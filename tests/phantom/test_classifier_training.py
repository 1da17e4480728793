"""Training the finding classifier end to end on real phantom renders (tiny config), and the shipped weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from medsign_forensics.errors import DatasetError, InputError
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, LABEL_INDEX, LABELS, load_classifier, predict
from medsign_forensics.phantom.classifier_data import random_specs, render_cached
from medsign_forensics.phantom.classifier_train import TrainConfig, build_specs, train_classifier
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone
from medsign_forensics.training.progress import ProgressEvent

renderer = pytest.importorskip("medsign_forensics.phantom.renderer")


class _Interrupted(Exception):
    pass


def test_tiny_run_trains_evaluates_saves_and_resumes_exactly(tmp_path) -> None:
    config = TrainConfig.tiny()
    done = train_classifier(config, tmp_path / "full")
    assert np.isfinite(done.final_loss)
    assert len(done.scores) == len(LABELS) and done.train_images == config.n_random
    load_classifier(done.weights_dir)  # strict, hash-checked
    events = [json.loads(line)["event"] for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "done" and events.count("step") == config.steps
    assert json.loads((tmp_path / "full" / "eval.json").read_text())["eval_images"] == config.n_random_eval

    def stop_after_two(event: ProgressEvent) -> None:
        if event.task == "training classifier" and event.done == 2:
            raise _Interrupted

    shutil.copytree(tmp_path / "full" / "cache", tmp_path / "resumed" / "cache")  # same specs: skip re-rendering
    with pytest.raises(_Interrupted):
        train_classifier(config, tmp_path / "resumed", progress=stop_after_two)
    resumed = train_classifier(config, tmp_path / "resumed")
    assert resumed.weights_sha256 == done.weights_sha256

    with pytest.raises(InputError, match="different settings"):
        train_classifier(replace(config, lr=1e-4), tmp_path / "full")


def test_training_and_held_out_seeds_never_overlap() -> None:
    train, held_out = build_specs(replace(TrainConfig.tiny(), n_random=50, n_random_eval=50))
    assert not {s.seed for s in train} & {s.seed for s in held_out}
    assert {s.findings for s in train} != {s.findings for s in held_out}


def test_render_cache_refuses_another_spec_list_or_renderer(tmp_path) -> None:
    specs = random_specs(3, seed_base=0, rng_seed=0)
    first = render_cached(specs, tmp_path, size=256, workers=1)
    again = render_cached(specs, tmp_path, size=256, workers=1)
    assert first.render_cpu_seconds > 0 and again.render_cpu_seconds == 0 and np.array_equal(again.images, first.images)
    with pytest.raises(DatasetError, match="another spec list"):
        render_cached(random_specs(3, seed_base=7, rng_seed=0), tmp_path, size=256, workers=1)
    (tmp_path / "renderer.sha256").write_text("0" * 64 + "\n")  # as if the renderer's code had changed since
    with pytest.raises(DatasetError, match="another renderer version"):
        render_cached(specs, tmp_path, size=256, workers=1)


def test_rendered_labels_follow_the_drawn_findings(tmp_path) -> None:
    finding = Finding(FindingKind.EFFUSION, Side.RIGHT, Zone.LOWER, Severity.SEVERE)
    spec_list = random_specs(1, seed_base=0, rng_seed=0)
    spec_list = [replace(spec_list[0], findings=(finding, Finding(FindingKind.CARDIOMEGALY)))]
    data = render_cached(spec_list, tmp_path, size=256, workers=1)
    assert data.images.dtype == np.uint8 and data.images.shape == (1, 256, 256)
    on = {LABELS[i] for i in np.flatnonzero(data.labels[0])}
    assert on == {"effusion_right", "cardiomegaly"}


@pytest.mark.skipif(not (DEFAULT_CLASSIFIER_DIR / "config.json").exists(), reason="no shipped classifier weights")
def test_shipped_weights_see_a_large_right_effusion() -> None:
    model = load_classifier()
    effusion = Finding(FindingKind.EFFUSION, Side.RIGHT, Zone.LOWER, Severity.SEVERE)
    images = np.stack(
        [renderer.render_study([effusion], seed=s).image for s in (1, 2)]
        + [renderer.render_study([], seed=s).image for s in (1, 2)]
    )
    probabilities = predict(model, images)[:, LABEL_INDEX["effusion_right"]]
    assert probabilities[:2].min() > 0.5
    assert probabilities[:2].min() > probabilities[2:].max()
