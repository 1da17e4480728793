"""The localization benchmark runs end to end on a tiny random model (its figures are labelled meaningless)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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


def _load_script():
    spec = importlib.util.spec_from_file_location("localization_eval", REPO / "benchmarks" / "localization_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_on_a_tiny_model(model_folder, tmp_path):
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"id": f"r{i}", "report": text}) + "\n" for i, text in enumerate(REPORTS)))
    out = tmp_path / "localization_eval.md"
    script = _load_script()
    code = script.main([
        "--model", str(model_folder), "--reports", str(reports), "--test-fraction", "0.5", "--n", "2",
        "--prior-n", "3", "--overhead-n", "1", "--steps", "2", "--timesteps", "300", "--out", str(out),
    ])
    assert code == 0
    text = out.read_text()
    assert "UNTRAINED (RANDOM-WEIGHT) MODEL" in text
    assert "| **all** | " in text and "CAS+AAS" in text and "prior (same kind)" in text
    assert "capture overhead" in text and "peak RSS" in text
    assert "held-out" in text and "phantoms" in text
