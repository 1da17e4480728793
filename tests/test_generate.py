"""generate.py: report -> watermarked image -> signed DICOM study, with a tiny random diffusion model.

The tiny model's "watermarked" decoder is its own decoder (nothing was fine-tuned), so attribution is arranged
the way the verify tests arrange it: generation is deterministic, so the key the tiny extractor reads from a
first generation is issued to a second deployment, which then generates the same pixels and is attributed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.verify import deployment_for, tiny_model_dir

from medsign_forensics.diffusion import load_model
from medsign_forensics.errors import InputError, ModelError, RegistryError
from medsign_forensics.evaluate.synthetic import REPORT, World, build_extractor, build_world
from medsign_forensics.generate import generate_study
from medsign_forensics.imageio import read_image
from medsign_forensics.provenance import IssuerKey
from medsign_forensics.verify import VerdictKind, Verifier
from medsign_forensics.watermark.deployment import key_from_hex, key_from_registry, load_deployment, save_deployment
from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor

FAST = {"steps": 2, "guidance_scale": 1.0}


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture
def world(tmp_path, extractor_dir) -> World:
    return build_world(tmp_path / "world", extractor_dir, decoys=2)


def test_generate_then_verify_is_attributed_for_the_study_and_the_png(world, model, tmp_path):
    first = deployment_for(world, model, tmp_path / "site-first")
    made = generate_study(report=REPORT, out=tmp_path / "first.dcm", signer=world.issuer, deployment=first,
                          registry=world.registry_dir, model=model, seed=5, allow_weak=True, **FAST)
    key = extract_bits(load_extractor(world.extractor_dir), [read_image(made.study.path).pixels])[0][0]
    second = deployment_for(world, model, tmp_path / "site-second", key=key)
    study = generate_study(report=REPORT, out=tmp_path / "study.dcm", signer=world.issuer, deployment=second,
                           registry=world.registry_dir, model=model, seed=5, png=tmp_path / "study.png",
                           allow_weak=True, **FAST)
    assert study.study.pixel_sha256 == made.study.pixel_sha256  # deterministic generation
    with Verifier.open(registry=world.registry_dir, extractor=world.extractor_dir) as verifier:
        dicom = verifier.verify_file(study.study.path)
        png = verifier.verify_file(study.png)
        first_verdict = verifier.verify_file(made.study.path)
    assert dicom.kind is VerdictKind.ATTRIBUTED and dicom.provenance_id == study.provenance_id
    assert not [c.name for c in dicom.checks if c.status.value == "fail"]
    assert png.kind is VerdictKind.ATTRIBUTED and png.provenance_id == study.provenance_id
    # the first study's genuine tags name the first deployment, but its pixels carry the second one's key
    assert first_verdict.kind is VerdictKind.MISMATCH
    assert study.to_dict()["sop_instance_uid"] == dicom.sop_instance_uid
    assert study.to_dict()["layout_guidance"] == "off"  # recorded; this model has no layout to guide
    assert (study.width, study.height) == (64, 64)


def test_revoked_or_unregistered_deployments_generate_nothing(world, model, tmp_path):
    folder = deployment_for(world, model, tmp_path / "site-r")
    with world.open_registry() as registry:
        registry.revoke(load_deployment(folder).provenance_id, world.issuer, reason="retired")
    with pytest.raises(RegistryError, match="revoked"):
        generate_study(report=REPORT, out=tmp_path / "x.dcm", signer=world.issuer, deployment=folder,
                       registry=world.registry_dir, model=model, **FAST)
    unregistered = save_deployment(tmp_path / "site-u", vae=model.vae, key=key_from_hex("ab" * 6),
                                   base_model={"name": model.name, "path": str(model.path),
                                               "weights_sha256": model.weights_sha256},
                                   extractor={"path": "x", "sha256": "0" * 64}, config={}, seed=0, device="cpu",
                                   wall_time_s=0.0, metrics={})
    with pytest.raises(RegistryError, match="unregistered"):
        generate_study(report=REPORT, out=tmp_path / "x.dcm", signer=world.issuer, deployment=unregistered,
                       registry=world.registry_dir, model=model, **FAST)
    assert not (tmp_path / "x.dcm").exists()


def test_signer_must_be_an_issuer_of_the_registry(world, model, tmp_path):
    folder = deployment_for(world, model, tmp_path / "site-s")
    with pytest.raises(RegistryError, match="not an issuer key of this registry"):
        generate_study(report=REPORT, out=tmp_path / "x.dcm", signer=IssuerKey.generate("Stranger"),
                       deployment=folder, registry=world.registry_dir, model=model, **FAST)


def test_record_must_vouch_for_the_weights(world, model, tmp_path):
    entry = world.issue(deployment="site-w")  # issued for the helpers' placeholder weights digest
    folder = save_deployment(tmp_path / "site-w", vae=model.vae,
                             key=key_from_registry(world.registry_dir, entry.provenance_id),
                             base_model={"name": model.name, "path": str(model.path),
                                         "weights_sha256": model.weights_sha256},
                             extractor={"path": "x", "sha256": "0" * 64}, config={}, seed=0, device="cpu",
                             wall_time_s=0.0, metrics={})
    with pytest.raises(ModelError, match="vouches for weights"):
        generate_study(report=REPORT, out=tmp_path / "x.dcm", signer=world.issuer, deployment=folder,
                       registry=world.registry_dir, model=model, **FAST)


def test_input_errors(world, model, tmp_path):
    folder = deployment_for(world, model, tmp_path / "site-i")
    with pytest.raises(InputError, match="empty"):
        generate_study(report="  ", out=tmp_path / "x.dcm", signer=world.issuer, deployment=folder,
                       registry=world.registry_dir, model=model)
    with pytest.raises(InputError, match=r"\.png"):
        generate_study(report=REPORT, out=tmp_path / "x.dcm", signer=world.issuer, deployment=folder,
                       registry=world.registry_dir, model=model, png=tmp_path / "x.jpg")
    with pytest.raises(ModelError, match="deployment.json"):
        generate_study(report=REPORT, out=tmp_path / "x.dcm", signer=world.issuer, deployment=tmp_path / "nothing",
                       registry=world.registry_dir, model=model)
