"""The generator benchmark: its scoring and Fréchet distance, and an end-to-end run on tiny random models (whose
figures it must label as a pipeline check)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.benchmarks import load_benchmark

from medsign_forensics.phantom.classifier import (
    LABEL_INDEX,
    LABELS,
    ClassifierConfig,
    FindingClassifier,
    save_classifier,
)
from medsign_forensics.reports import Finding, FindingKind, Side

REPORTS = [
    "Small left pleural effusion.",
    "No acute cardiopulmonary abnormality. The lungs are clear.",
    "Cardiomegaly. No pneumothorax.",
    "Right upper lobe nodule.",
]




@pytest.fixture(scope="module")
def script():
    return load_benchmark("generator_eval")


def _probs(*labels: str) -> np.ndarray:
    row = np.full(len(LABELS), 0.1, np.float32)
    for name in labels:
        row[LABEL_INDEX[name]] = 0.9
    return row


def test_scoring_counts_recall_normals_and_sides(script) -> None:
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
    scores = script.score(findings, probabilities, threshold=0.5)
    assert scores.reports == {"effusion": 3, "nodule": 1, "cardiomegaly": 1}
    assert scores.recall("effusion") == 1.0 and scores.recall("cardiomegaly") == 0.0
    assert scores.macro_recall(1) == pytest.approx(2 / 3)
    assert scores.macro_recall(2) == 1.0 and scores.macro_kinds(2) == ["effusion"]
    assert scores.macro_recall(4) is None
    assert scores.normal_rate() == 0.5
    assert scores.sided_found == {"effusion": 3}
    assert scores.side_rate() == pytest.approx(2 / 3)


def test_frechet_distance_is_zero_for_equal_sets_and_the_mean_shift_for_shifted_ones(script) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 5))
    assert abs(script.frechet_distance(a, a).distance) < 1e-6
    shifted = script.frechet_distance(a, a + np.array([1.0, 2.0, 0.0, 0.0, 0.0]))
    assert shifted.distance == pytest.approx(5.0, abs=1e-6)
    far = script.frechet_distance(a, 3 * rng.standard_normal((200, 5)))
    assert far.distance > 10 and far.n_a == far.n_b == 200
    with pytest.raises(ValueError):
        script.frechet_distance(a[:1], a)


def test_benchmark_runs_on_tiny_random_models(script, grey_model_dir: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"id": f"r{i}", "report": text}) + "\n" for i, text in enumerate(REPORTS)))
    torch.manual_seed(0)
    classifier = tmp_path / "classifier"
    save_classifier(
        FindingClassifier(ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), groups=4, image_size=64)), classifier
    )
    out = tmp_path / "generator_eval.md"
    code = script.main([
        "--model", str(grey_model_dir), "--classifier", str(classifier), "--reports", str(reports),
        "--test-fraction", "0.99", "--n", "3", "--steps", "2", "--batch", "2", "--min-kind-reports", "1",
        "--threads", "1", "--out", str(out),
    ])
    assert code == 0
    text = out.read_text()
    assert "PIPELINE CHECK WITH AN UNTRAINED (RANDOM-WEIGHT) MODEL and CLASSIFIER" in text
    assert "## Done means" in text and "## Per finding kind" in text and "## Fréchet distance" in text
    assert "the classifier defines no threshold" in text and "BIASED estimate" in text
    assert "| held-out reports evaluated | 3 | 3 | >= 200 | NOT met |" in text
    assert "python benchmarks/generator_eval.py --model" in text
    rates = re.findall(r"\| (\d\.\d{3})(?: \(\d+\))? \|", text)
    assert rates and all(0.0 <= float(rate) <= 1.0 for rate in rates)
    distances = [float(v) for v in re.findall(r"\| \d+ \| (-?[\d.e+-]+) \|\n", text)]
    assert len(distances) == 3 and all(np.isfinite(d) and d > -1e-6 for d in distances)
