"""What the probes of this folder share: the held-out reports they score, and the figures they print of a score."""
import collections

import numpy as np

from medsign_forensics.diffusion.configs import DataConfig
from medsign_forensics.evaluate.generator import THRESHOLD, FindingScores, present_findings
from medsign_forensics.phantom.classifier import LABELS, predict
from medsign_forensics.reports import load_reports, split_reports


def held_out_texts(count: int = 200) -> list[str]:
    """The first ``count`` reports of the test split, as `generator_eval.py` scores them (seed i for report i)."""
    data = DataConfig()
    _, test = split_reports(load_reports(data.corpus), test_fraction=data.test_fraction, seed=data.split_seed)
    return [report.text for report in test[:count]]


def normal_texts(count: int) -> list[str]:
    """The first ``count`` normal reports (no present finding) among the 200 held-out ones."""
    return [text for text in held_out_texts(200) if not present_findings(text)][:count]


def summary(scores: FindingScores) -> dict:
    """Macro recall over kinds with >= 20 reports, their recalls, normal reports flagged, and the stated side."""
    return {"macro": scores.macro_recall(20), "recall": {k: scores.recall(k) for k in scores.macro_kinds(20)},
            "normal": scores.normal_rate(), "side": scores.side_rate(), "side_n": sum(scores.sided_found.values())}


def flagged(classifier, images: np.ndarray) -> dict:
    """The share of ``images`` with any predicted label, and the six most frequent labels."""
    predicted = predict(classifier, images) >= THRESHOLD
    labels = collections.Counter(LABELS[j] for row in predicted for j in np.flatnonzero(row))
    return {"flagged": float(predicted.any(1).mean()), "labels": dict(labels.most_common(6))}
