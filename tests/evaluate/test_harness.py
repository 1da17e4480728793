import json

import numpy as np
import pytest
from PIL import Image

from medsign_forensics.attacks.library import TABLE1_ATTACKS
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.evaluate import EvaluationConfig, evaluate
from medsign_forensics.evaluate.methods import baseline_key, build_baseline


def _run(world, out, **changes):
    config = EvaluationConfig(**{"n": 2, "baselines": ("dwtdct",), "reports": str(world["reports"]), **changes})
    return evaluate(
        config, deployment=world["medsign"], out_dir=out, stable_signature=world["stable"], ablations=[world["no_pre"]],
        classifier=world["classifier"], cache_dir=world["cache"],
    )


def test_evaluation_end_to_end_writes_markdown_json_and_figure(world, tmp_path):
    result = _run(world, tmp_path / "eval")
    data = json.loads(result.json.read_text())
    assert data == json.loads(json.dumps(result.data))
    assert data["reports"]["items"] == 2 and data["attacks"] == [a.name for a in TABLE1_ATTACKS]
    names = [m["name"] for m in data["methods"]]
    assert names == ["MedSign", "Stable Signature", "w/o L_pre", "DWT-DCT"]
    medsign, stable = data["methods"][0], data["methods"][1]
    for method in data["methods"]:
        assert set(method["bit_accuracy"]) == set(data["attacks"]) and 0 <= method["bit_accuracy_avg"] <= 1
        assert method["detection"]["jpeg_q50"]["threshold"] == 30  # 32 bits at FPR 1e-6
        assert method["false_positives_generated"]["total"] == 2 and len(method["per_image"]) == 2
        assert method["confidence"] is not None
        assert set(method["confidence"]["per_kind"]) == set(data["finding_kinds"]["kinds"])
    # The bigger decoder perturbation of the "Stable Signature" stand-in shows as lower fidelity.
    assert stable["psnr"]["mean"] < medsign["psnr"]["mean"] and medsign["ssim"]["mean"] <= 1.0
    assert data["finding_kinds"]["kinds"] and data["real_data"] is None
    assert any("real radiographs not measured" in note for note in data["notes"])
    markdown = result.markdown.read_text()
    for heading in ("## Table 1", "## Detection", "## Measured false positives", "## Table 2", "## Ablations",
                    "inside vs outside", "![Fig. 3](fig3.png)", "UNREGISTERED"):
        assert heading in markdown, heading
    figure = np.asarray(Image.open(result.figure))
    assert figure.shape[2] == 3 and figure.shape[1] == 5 * 256 + 4 * 4  # original + 2 x (image, difference)


def test_real_radiographs_and_a_missing_classifier(world, tmp_path, real_data):
    config = EvaluationConfig(n=2, baselines=(), reports=str(world["reports"]), real_data=real_data, real_max=2)
    result = evaluate(config, deployment=world["medsign"], out_dir=tmp_path / "eval", cache_dir=world["cache"],
                      classifier=None)
    real = result.data["real_data"]
    assert real["files"] == 2 and real["per_method"]["MedSign"]["total"] + len(real["unreadable"]) == 2
    if result.data["classifier"]["note"]:  # no installed default classifier: Table 2 is marked, not faked
        assert result.data["methods"][0]["confidence"] is None and "Table 2 not computed" in result.markdown.read_text()


def test_evaluation_refuses_inconsistent_inputs(world, tmp_path):
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(world["no_pre"], foreign)
    manifest = json.loads((foreign / "deployment.json").read_text())
    manifest["base_model"]["weights_sha256"] = "0" * 64  # tuned from another base model
    (foreign / "deployment.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="another base model"):
        evaluate(EvaluationConfig(n=2, baselines=()), deployment=world["medsign"], out_dir=tmp_path / "e",
                 ablations=[foreign])
    with pytest.raises(ModelError, match="classifier"):
        evaluate(EvaluationConfig(n=2, baselines=(), reports=str(world["reports"])), deployment=world["medsign"],
                 out_dir=tmp_path / "e", classifier=tmp_path / "no-classifier", cache_dir=world["cache"])
    with pytest.raises(InputError):
        EvaluationConfig(baselines=("ssl",))


def test_baseline_keys():
    key = np.arange(48) % 2
    assert baseline_key("dwtdct", key).size == 48 and baseline_key("rivagan", key).size == 32
    assert build_baseline("dwtdct", key).bits == 48
