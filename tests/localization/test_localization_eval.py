"""The localization benchmark runs end to end on a tiny random model (its figures are labelled meaningless)."""

from __future__ import annotations

import json

from helpers.benchmarks import load_benchmark

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




def test_benchmark_runs_on_a_tiny_model(model_folder, tmp_path):
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"id": f"r{i}", "report": text}) + "\n" for i, text in enumerate(REPORTS)))
    out = tmp_path / "localization_eval.md"
    script = load_benchmark("localization_eval")
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
