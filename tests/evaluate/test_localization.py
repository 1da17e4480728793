"""Localization maps against phantom ground truth (medsign_forensics.evaluate.localization) on a tiny random
model: every kind drawn gets a pointing-game hit or miss and an IoU per method, and the overhead is timed."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.localization import build_model_folder

from medsign_forensics.diffusion import load_model
from medsign_forensics.errors import DatasetError
from medsign_forensics.evaluate.localization import (
    PRIORS,
    VARIANTS,
    build_priors,
    has_present_finding,
    measure_overhead,
    score_maps,
    top_fraction,
)
from medsign_forensics.reports import Report
from medsign_forensics.reports.words import medical_words, word_tokens

REPORTS = [
    "Small left pleural effusion.",
    "Right upper lobe nodule. Heart size is normal.",
    "Cardiomegaly. No pneumothorax.",
    "Large right pneumothorax.",
    "Left lower lobe consolidation.",
    "Calcified granuloma in the right lung.",
    "Moderate right pleural effusion and bibasilar atelectasis.",
    "Left upper lobe mass.",
    "The heart is enlarged. Pulmonary edema.",
    "Lungs are clear. No effusion.",
    "Small right effusion.",
    "Left lung nodule.",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(build_model_folder(tmp_path_factory.mktemp("tiny-model") / "model"))


def _reports(texts: list[str]) -> list[Report]:
    return [Report(report_id=f"r{i}", findings=text, impression="") for i, text in enumerate(texts)]


def test_maps_and_priors_are_scored_per_kind_and_the_overhead_is_timed(model):
    reports = [r for r in _reports(REPORTS) if has_present_finding(r)]
    assert len(reports) == 11  # "Lungs are clear. No effusion." asserts nothing
    prior, kind_prior, studies = build_priors(reports[6:], seed=0, size=256)
    assert prior.shape == (256, 256) and 0 < studies <= 5 and 0.0 <= prior.min() <= prior.max() <= 1.0
    assert all(value.max() <= 1.0 for value in kind_prior.values())
    assert np.mean(np.arange(100.0) > top_fraction(np.arange(100.0))) == pytest.approx(0.3)

    scores, evaluated = score_maps(model, reports[:6], prior=prior, kind_prior=kind_prior, seed=0, size=256,
                                   timesteps=(300,))
    assert 0 < evaluated <= 6 and len(scores.report_iou) == evaluated
    kinds = {kind for kind, _ in scores.hits}
    assert kinds and {method for _, method in scores.hits} == {*VARIANTS, *PRIORS}
    for kind in kinds:
        counts = {len(scores.hits[(kind, method)]) for method in (*VARIANTS, *PRIORS)}
        assert len(counts) == 1  # every method scored on the same findings
        assert all(0.0 <= v <= 1.0 for method in (*VARIANTS, *PRIORS) for v in scores.ious[(kind, method)])

    texts = [r.text for r in reports if word_tokens(model.tokenizer, r.text, medical_words(r.text))[0]][:1]
    overhead = measure_overhead(model, texts, seed=0, steps=2, guidance=4.0)
    assert overhead.plain_s > 0 and overhead.capture_s > 0 and overhead.capture_and_maps_s > 0
    assert overhead.capture_state_bytes > 0 and overhead.cuda_peak_plain is None


def test_priors_need_a_lesion():
    with pytest.raises(DatasetError, match="no report rendered a lesion"):
        build_priors(_reports(["No acute cardiopulmonary abnormality."]), seed=0, size=256)
