"""Generator quality (medsign_forensics.evaluate.generator): its scoring, the Fréchet distance, and the whole
measurement on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.diffusion import REPORT_TEXTS
from helpers.verify import tiny_model_dir

from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.configs import LayoutConfig, tiny_config
from medsign_forensics.diffusion.export import build_random_model, is_untrained
from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.errors import InputError
from medsign_forensics.evaluate.generator import (
    LAYOUT_SEED_OFFSET,
    SIDED_TEMPLATES,
    evaluate_generator,
    generate_images,
    present_findings,
    score,
    sided_prompts,
)
from medsign_forensics.evaluate.metrics import frechet_distance
from medsign_forensics.phantom.classifier import (
    LABEL_INDEX,
    LABELS,
    ClassifierConfig,
    FindingClassifier,
)
from medsign_forensics.reports import Finding, FindingKind, Side

REPORTS = [
    "Small left pleural effusion.",
    "No acute cardiopulmonary abnormality. The lungs are clear.",
    "Cardiomegaly. No pneumothorax.",
    "Right upper lobe nodule.",
]


def _probs(*labels: str) -> np.ndarray:
    row = np.full(len(LABELS), 0.1, np.float32)
    for name in labels:
        row[LABEL_INDEX[name]] = 0.9
    return row


def test_scoring_counts_recall_normals_and_sides() -> None:
    left_effusion = (Finding(kind=FindingKind.EFFUSION, side=Side.LEFT),)
    both_effusion = (Finding(kind=FindingKind.EFFUSION, side=Side.BILATERAL),)
    some_nodule = (Finding(kind=FindingKind.NODULE, side=Side.UNSPECIFIED),)
    heart = (Finding(kind=FindingKind.CARDIOMEGALY),)
    findings = [left_effusion, left_effusion, both_effusion, some_nodule, heart, (), ()]
    probabilities = np.stack([
        _probs("effusion_left"),  # found, right side
        _probs("effusion_right"),  # found, wrong side
        _probs("effusion_right", "effusion_left"),  # bilateral: both sides wanted
        _probs("nodule_left"),  # found; no stated side, so no side score
        _probs(),  # cardiomegaly missed
        _probs(),  # normal, clean
        _probs("mass_right"),  # normal, flagged
    ])
    scores = score(findings, probabilities, threshold=0.5)
    assert scores.reports == {"effusion": 3, "nodule": 1, "cardiomegaly": 1}
    assert scores.recall("effusion") == 1.0 and scores.recall("cardiomegaly") == 0.0
    assert scores.macro_recall(1) == pytest.approx(2 / 3)
    assert scores.macro_recall(2) == 1.0 and scores.macro_kinds(2) == ["effusion"]
    assert scores.normal_labels == {"mass_right": 1}  # what the flagged normal image was taken to show
    assert scores.macro_recall(4) is None
    assert scores.normal_rate() == 0.5
    assert scores.sided_found == {"effusion": 3}
    assert scores.side_rate() == pytest.approx(2 / 3)


def test_sided_prompts_each_state_one_side_the_parser_reads() -> None:
    prompts = sided_prompts(2 * len(SIDED_TEMPLATES))
    assert len(set(prompts)) == len(prompts)
    for index, prompt in enumerate(prompts):
        (finding,) = present_findings(prompt)
        assert finding.kind.lateralised and finding.side is (Side.RIGHT, Side.LEFT)[index % 2]


def test_frechet_distance_is_zero_for_equal_sets_and_the_mean_shift_for_shifted_ones() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 5))
    assert abs(frechet_distance(a, a).distance) < 1e-6
    shifted = frechet_distance(a, a + np.array([1.0, 2.0, 0.0, 0.0, 0.0]))
    assert shifted.distance == pytest.approx(5.0, abs=1e-6)
    far = frechet_distance(a, 3 * rng.standard_normal((200, 5)))
    assert far.distance > 10 and far.n_a == far.n_b == 200
    with pytest.raises(ValueError):
        frechet_distance(a[:1], a)


def test_the_whole_measurement_runs_on_tiny_random_models(tmp_path_factory) -> None:
    folder = tiny_model_dir(tmp_path_factory)
    assert is_untrained(folder)  # what makes the benchmark label its figures a pipeline check
    model = load_model(folder)
    torch.manual_seed(0)
    classifier = FindingClassifier(ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), groups=4, image_size=64))
    events = []
    results = evaluate_generator(model, classifier.eval(), REPORTS[:3], seed=0, steps=2, guidance=4.0, batch=2,
                                 progress=events.append, sided=2)
    assert results.n == 3 and results.feature_dim > results.n and len(results.per_image_s) == 2
    for scores in (results.sided, results.sided_phantoms):
        assert scores is not None and scores.reports == {"consolidation": 2} and scores.normal_reports == 0
    for scores in (results.generated, results.phantoms, results.reconstructed):
        assert scores.normal_reports == 1 and sum(scores.reports.values()) == 2  # effusion; cardiomegaly
        for rate in (scores.normal_rate(), scores.recall("effusion"), scores.recall("cardiomegaly")):
            assert rate is not None and 0.0 <= rate <= 1.0
    for fd in (results.fd_generated, results.fd_reconstructed, results.fd_other_seeds):
        assert fd.n_a == fd.n_b == 3 and np.isfinite(fd.distance) and fd.distance > -1e-6
    assert {event.task for event in events} == {"generating", "rendering phantoms", "rendering phantoms, other seeds",
                                               "VAE reconstructions", "classifier", "generating, left/right prompts",
                                               "rendering phantoms, left/right prompts"}
    last = {event.task: event for event in events}
    assert all(event.done == event.total for event in last.values())
    with pytest.raises(ValueError, match="at least 2 reports"):
        evaluate_generator(model, classifier, REPORTS[:1], seed=0, steps=2, guidance=4.0, batch=2)


def test_a_layout_model_is_sampled_from_layouts_that_are_not_the_scored_phantoms(
    tmp_path, tmp_path_factory, tiny_classifier
) -> None:
    from dataclasses import replace

    config = replace(tiny_config(), layout=LayoutConfig(enabled=True))
    model = load_model(build_random_model(tmp_path / "layout", config=config, texts=REPORT_TEXTS))
    layouts = report_layouts(REPORTS[:2], seeds=[LAYOUT_SEED_OFFSET, LAYOUT_SEED_OFFSET + 1], size=64, grid=8)
    one_by_one, _ = generate_images(model, REPORTS[:2], seed=0, steps=2, guidance=4.0, batch=1, layouts=layouts)
    together, _ = generate_images(model, REPORTS[:2], seed=0, steps=2, guidance=4.0, batch=2, layouts=layouts)
    plain, _ = generate_images(model, REPORTS[:2], seed=0, steps=2, guidance=4.0, batch=2)
    assert np.allclose(one_by_one, together, atol=1e-5) and not np.allclose(together, plain, atol=1e-3)
    results = evaluate_generator(model, tiny_classifier, REPORTS[:2], seed=0, steps=2, guidance=4.0, batch=2,
                                 layout=True)
    assert results.n == 2
    with pytest.raises(InputError, match="no layout adapter"):
        evaluate_generator(load_model(tiny_model_dir(tmp_path_factory)), tiny_classifier, REPORTS[:2], seed=0, steps=2,
                           guidance=4.0, batch=2, layout=True)


@pytest.fixture
def tiny_classifier() -> FindingClassifier:
    torch.manual_seed(0)
    return FindingClassifier(ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), groups=4, image_size=64)).eval()
