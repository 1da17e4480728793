"""The latent layer's rows in the evaluation, on the shipped demo deployment (which carries the layer)."""

from __future__ import annotations

import json

from medsign_forensics.config import WEIGHTS_DIR
from medsign_forensics.evaluate import EvaluationConfig, evaluate


def test_gaussian_shading_rows_are_scored_beside_medsign(tmp_path):
    result = evaluate(EvaluationConfig(n=2, baselines=(), real_data=None, batch=2),
                      deployment=WEIGHTS_DIR / "demo-deployment", out_dir=tmp_path / "eval")
    methods = {m["name"]: m for m in json.loads(result.json.read_text())["methods"]}
    assert set(methods) == {"MedSign", "Gaussian Shading", "MedSign + Gaussian Shading"}
    gs, both = methods["Gaussian Shading"], methods["MedSign + Gaussian Shading"]
    assert gs["bit_accuracy"]["none"] >= 0.95 and both["bit_accuracy"]["none"] >= 0.95
    assert gs["psnr"]["mean"] is None and gs["lesion"]["inside"] is None  # another sample: no pixel fidelity
    assert both["psnr"]["mean"] > 35 and both["layers"] == 2  # the decoder layer's change on that sample
    assert both["detection"]["none"]["threshold"] >= methods["MedSign"]["detection"]["none"]["threshold"]
    assert gs["false_positives_generated"]["detected"] == 0
    markdown = result.markdown.read_text()
    assert "MedSign + Gaussian Shading" in markdown and "Bonferroni" in markdown
