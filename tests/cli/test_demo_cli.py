"""`medsign demo` end to end with tiny models: phantoms, then generate -> verify after ordinary handling."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from verify_helpers import build_extractor, build_world, deployment_for, tiny_model_dir

from medsign_forensics.cli.main import app
from medsign_forensics.diffusion import load_model
from medsign_forensics.generate import generate_study
from medsign_forensics.imageio import read_image
from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor


@pytest.fixture(scope="module")
def held_out_report() -> str:
    from medsign_forensics.reports import load_reports, split_reports

    _, test = split_reports(load_reports("open-i"))
    return next(report.text for report in test if report.text.strip())


def test_demo_generates_and_attributes_its_study(tmp_path, tmp_path_factory, held_out_report):
    world = build_world(tmp_path / "world", build_extractor(tmp_path / "extractor"), decoys=2)
    model = load_model(tiny_model_dir(tmp_path_factory))
    # The tiny decoder is not fine-tuned: register, as the demo deployment's key, what the extractor reads
    # from this exact generation (same report, seed and sampler settings as the demo uses).
    first = deployment_for(world, model, tmp_path / "first")
    made = generate_study(report=held_out_report, out=tmp_path / "first.dcm", signer=world.issuer,
                          deployment=first, registry=world.registry_dir, model=model, seed=0)
    key = extract_bits(load_extractor(world.extractor_dir), [read_image(made.study.path).pixels])[0][0]
    deployment = deployment_for(world, model, tmp_path / "demo-deployment", key=key)

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--reports", "2", "--deployment", str(deployment),
                                      "--extractor", str(world.extractor_dir), "--registry",
                                      str(world.registry_dir), "--json"])
    assert result.exit_code == 0, result.output
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    assert steps["phantom world"]["status"] == "done" and len(steps["phantom world"]["rows"]) == 2
    assert (out / "phantoms" / "00.png").is_file() and (out / "phantoms" / "01_mask.png").is_file()
    assert steps["generate"]["status"] == "done"
    verdicts = {row["file"].rsplit("/", 1)[-1]: row for row in steps["verify"]["rows"]}
    assert set(verdicts) == {"study.dcm", "study.png", "study_jpeg_q75.jpg", "study_resize_edge0.7.png",
                             "study_dicomwl_c2048_w4095.png"}
    assert verdicts["study.dcm"]["verdict"] == "attributed" and verdicts["study.png"]["verdict"] == "attributed"
    assert verdicts["study.dcm"]["provenance_id"] == steps["generate"]["rows"][0]["provenance_id"]
    # the repository's registry was copied, never modified
    assert (out / "registry").is_dir()


def test_demo_without_trained_weights_says_what_it_skipped(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--reports", "1",
                                      "--deployment", str(tmp_path / "missing"), "--json"])
    assert result.exit_code == 0, result.output
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    assert steps["phantom world"]["status"] == "done"
    assert steps["generate"]["status"] == "skipped" and "deployment" in steps["generate"]["detail"]
