"""The benchmark harness: MedSign against Stable Signature mode, ablations and post-generation baselines on the
same held-out reports, seeds and latents (Table 1, detection, false positives, Table 2, Fig. 3).

    from medsign_forensics.evaluate import EvaluationConfig, evaluate
    result = evaluate(EvaluationConfig(n=20), deployment="deployments/cxr", out_dir="eval/cxr",
                      stable_signature="deployments/cxr-ss")
    result.markdown, result.json, result.figure
"""

from medsign_forensics.evaluate.harness import EvaluationConfig, EvaluationResult, default_real_data, evaluate

__all__ = ["EvaluationConfig", "EvaluationResult", "default_real_data", "evaluate"]
