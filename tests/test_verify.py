"""verify.py: attribution statistics, registry status, DICOM provenance checks and the forgery suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from helpers.verify import save_png

from medsign_forensics.dicom.private import Element, find_block
from medsign_forensics.errors import ImageReadError, ModelError, RegistryError
from medsign_forensics.evaluate.synthetic import (
    MODEL,
    SIZE,
    World,
    build_extractor,
    build_world,
    read_bits,
    sample_image,
)
from medsign_forensics.key import p_value
from medsign_forensics.provenance import IssuerKey, Registry, load_policy
from medsign_forensics.reading import Scaling
from medsign_forensics.verify import VerdictKind, Verifier, verify_file
from medsign_forensics.watermark.extractor_io import load_extractor
from medsign_forensics.watermark.hidden import HiddenExtractor


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture
def world(tmp_path: Path, extractor_dir: Path) -> World:
    return build_world(tmp_path, extractor_dir)


@pytest.fixture
def verifier(world: World):
    with Verifier.open(registry=world.registry_dir, extractor=world.extractor_dir) as opened:
        yield opened


def check(verdict, name):
    return next(c for c in verdict.checks if c.name == name)


def test_planted_png_is_attributed_with_exact_statistics(world, verifier):
    verdict = verifier.verify_file(world.planted_png)
    assert verdict.kind is VerdictKind.ATTRIBUTED
    assert verdict.provenance_id == world.planted.provenance_id
    assert verdict.matched_bits == 48 and verdict.bit_accuracy == 1.0
    assert verdict.p_value == pytest.approx(2.0**-48)
    assert verdict.match.candidates == 6
    assert verdict.match.family_wise_p_value == pytest.approx(6 * 2.0**-48)
    assert verdict.match.deployment == "site-a" and verdict.match.model == "mini-cxr 0.1.0"
    assert check(verdict, "registry_entry").status.value == "pass"
    data = verdict.to_dict()
    for field in ("file", "verdict", "provenance_id", "p_value", "bit_accuracy", "matched_bits", "checks"):
        assert field in data
    assert json.loads(json.dumps(data))["verdict"] == "attributed"


def test_unwatermarked_images_are_not_detected(world, verifier, tmp_path):
    verdicts = [verifier.verify_file(save_png(tmp_path / f"r{i}.png", sample_image(500 + i))) for i in range(8)]
    assert all(v.kind is VerdictKind.NOT_DETECTED for v in verdicts), [v.matched_bits for v in verdicts]
    assert all(v.provenance_id is None and v.match.matched_bits < 41 for v in verdicts)
    # the reported p-value is the exact binomial tail of the reported match count
    v = verdicts[0]
    assert v.p_value == pytest.approx(p_value(v.matched_bits, 48))


def test_inconclusive_band(world, extractor_dir, tmp_path):
    """A key matching 39 of 48 bits: p = 3e-6 per key, family-wise 2e-5 over 6 keys -> inconclusive."""
    png = save_png(tmp_path / "x.png", sample_image(77))
    bits = read_bits(load_extractor(extractor_dir), png)
    near = bits.copy()
    near[:9] ^= 1
    entry = world.issue(near, deployment="near")
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir) as verifier:
        verdict = verifier.verify_file(png)
    assert verdict.kind is VerdictKind.INCONCLUSIVE
    assert verdict.match.provenance_id == entry.provenance_id and verdict.matched_bits == 39
    assert verdict.provenance_id is None  # not attributed


def test_revoked_key(world, extractor_dir):
    with world.open_registry() as registry:
        registry.revoke(world.planted.provenance_id, world.issuer, reason="decoder leaked")
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir) as verifier:
        verdict = verifier.verify_file(world.planted_png)
    assert verdict.kind is VerdictKind.REVOKED and verdict.kind.is_alarm
    assert verdict.provenance_id == world.planted.provenance_id
    assert "decoder leaked" in check(verdict, "registry_entry").detail


def test_key_unknown_to_the_registry_is_not_attributed(world, extractor_dir, tmp_path):
    """The planted image verified against another registry (without its key) is not attributed to anyone."""
    other = IssuerKey.generate("Someone Else")
    with Registry.open(tmp_path / "other", create=True) as registry:
        for seed in range(3):
            registry.issue(other, model=MODEL, deployment=f"x{seed}", policy=load_policy(),
                           rng=np.random.default_rng(100 + seed))
    verdict = verify_file(world.planted_png, registry=tmp_path / "other", extractor=extractor_dir)
    assert verdict.kind is VerdictKind.NOT_DETECTED


def test_empty_registry_gives_not_detected_with_reason(extractor_dir, tmp_path):
    Registry.open(tmp_path / "empty", create=True).close()
    png = save_png(tmp_path / "x.png", sample_image(3))
    verdict = verify_file(png, registry=tmp_path / "empty", extractor=extractor_dir)
    assert verdict.kind is VerdictKind.NOT_DETECTED and verdict.match is None
    assert "no 48-bit keys" in check(verdict, "registry_entry").detail


def test_tampered_registry_row_is_an_error_not_an_attribution(world, extractor_dir):
    import sqlite3

    with sqlite3.connect(world.registry_dir / "registry.sqlite") as db:
        db.execute("UPDATE keys SET record = replace(record, 'site-a', 'site-b') WHERE provenance_id = ?",
                   (world.planted.provenance_id,))
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir) as verifier:
        with pytest.raises(RegistryError, match="registry row"):
            verifier.verify_file(world.planted_png)
        verdict = verifier.try_verify_file(world.planted_png)
    assert verdict.kind is VerdictKind.ERROR and verdict.error_code == 5


def test_unreadable_file_raises_or_records(verifier, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ImageReadError):
        verifier.verify_file(bad)
    verdict = verifier.try_verify_file(bad)
    assert verdict.kind is VerdictKind.ERROR and verdict.error_code == 2
    assert str(bad) in verdict.error and "\n" not in verdict.error
    assert verdict.to_dict()["verdict"] == "error"


def test_tiny_image_is_refused(verifier, tmp_path):
    png = save_png(tmp_path / "tiny.png", sample_image(1, size=16))
    with pytest.raises(ImageReadError, match="at least 32"):
        verifier.verify_file(png)


def test_unwhitened_extractor_is_refused(world):
    with world.open_registry() as registry, pytest.raises(ModelError, match="whitening"):
        Verifier(registry=registry, extractor=HiddenExtractor(load_extractor(world.extractor_dir).config),
                 policy=load_policy())


def test_missing_extractor_folder_is_a_model_error(world, tmp_path):
    with pytest.raises(ModelError):
        Verifier.open(registry=world.registry_dir, extractor=tmp_path / "nothing")


def test_large_images_are_read_at_the_working_size(world, extractor_dir, tmp_path):
    big = np.asarray(Image.fromarray(world.planted_pixels).resize((300, 300), Image.Resampling.BICUBIC))
    png = save_png(tmp_path / "big.png", big)
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir) as verifier:
        assert verifier.verify_file(png).reading == "256x256"
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir, scaling=Scaling.NATIVE) as verifier:
        assert verifier.verify_file(png).reading == "300x300"
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir, scaling=Scaling.WORKING) as verifier:
        verdict = verifier.verify_file(world.planted_png)
    assert verdict.reading == "256x256" and any("resized from 64x64" in n for n in verdict.notes)


# -- DICOM: the forgery suite ----------------------------------------------------------------------------


def test_generated_study_is_attributed_and_all_checks_pass(world, verifier, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    verdict = verifier.verify_file(study.path)
    assert verdict.kind is VerdictKind.ATTRIBUTED
    assert verdict.claimed_provenance_id == world.planted.provenance_id
    assert verdict.sop_instance_uid == study.sop_instance_uid
    assert check(verdict, "tags_match_watermark").status.value == "pass"
    failed = [c.name for c in verdict.checks if c.status.value == "fail"]
    assert failed == []


def test_tags_copied_onto_another_image_is_a_mismatch(world, verifier, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    dataset = pydicom.dcmread(study.path)
    other = sample_image(900)
    dataset.PixelData = other.tobytes()
    dataset.save_as(tmp_path / "forged.dcm")
    verdict = verifier.verify_file(tmp_path / "forged.dcm")
    assert verdict.kind is VerdictKind.MISMATCH
    assert check(verdict, "tags_match_watermark").status.value == "fail"
    assert check(verdict, "pixel_hash").status.value == "fail"


def test_edited_pixels_are_tampered_while_the_watermark_still_attributes(world, verifier, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    dataset = pydicom.dcmread(study.path)
    pixels = dataset.pixel_array.copy()
    pixels[30:34, 30:34] = 255 - pixels[30:34, 30:34]
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(tmp_path / "edited.dcm")
    verdict = verifier.verify_file(tmp_path / "edited.dcm")
    assert verdict.kind is VerdictKind.TAMPERED
    assert verdict.provenance_id == world.planted.provenance_id  # the watermark still speaks
    assert check(verdict, "pixel_hash").status.value == "fail"


@pytest.mark.parametrize("element", [Element.RECORD_SIGNATURE, Element.STATEMENT_SIGNATURE])
def test_flipped_signature_byte_is_tampered(world, verifier, tmp_path, element):
    study = world.write_study(tmp_path / "study.dcm")
    dataset = pydicom.dcmread(study.path)
    block = find_block(dataset)
    signature = bytearray(block[element].value)
    signature[5] ^= 0x01
    block[element].value = bytes(signature)
    dataset.save_as(tmp_path / "flipped.dcm")
    verdict = verifier.verify_file(tmp_path / "flipped.dcm")
    assert verdict.kind is VerdictKind.TAMPERED
    assert any(c.status.value == "fail" and "signature" in c.name for c in verdict.checks)


def test_study_of_a_revoked_deployment_is_revoked(world, extractor_dir, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    with world.open_registry() as registry:
        registry.revoke(world.planted.provenance_id, world.issuer, reason="retired")
    with Verifier.open(registry=world.registry_dir, extractor=extractor_dir) as verifier:
        verdict = verifier.verify_file(study.path)
    assert verdict.kind is VerdictKind.REVOKED


def test_study_signed_by_an_issuer_unknown_to_the_registry_is_unverifiable(world, verifier, tmp_path):
    """Another registry's genuine study: its signatures cannot be checked here, which proves nothing either way."""
    stranger = IssuerKey.generate("Other Imaging AI")
    with Registry.open(tmp_path / "other", create=True) as registry:
        entry = registry.issue(stranger, model=MODEL, deployment="elsewhere", policy=load_policy())
    study = world.write_study(tmp_path / "study.dcm", sample_image(901), entry=entry, signer=stranger)
    verdict = verifier.verify_file(study.path)
    assert verdict.kind is VerdictKind.UNVERIFIABLE and not verdict.kind.is_alarm
    assert verdict.evidence is None
    assert check(verdict, "record_signature").status.value == "unverifiable"
    assert "unknown issuer" in check(verdict, "statement_signature").detail
    assert check(verdict, "pixel_hash").status.value == "skipped"
    with Registry.open(tmp_path / "other") as registry:  # against its own registry it verifies
        own = Verifier(registry=registry, extractor=verifier.extractor, policy=load_policy()).verify_file(study.path)
    assert {c.name: c.status.value for c in own.checks}["statement_signature"] == "pass"


def test_evidence_says_what_is_proven(world, verifier, tmp_path):
    signed = world.write_study(tmp_path / "study.dcm")
    assert verifier.verify_file(signed.path).evidence == "signature"
    planted = verifier.verify_file(world.planted_png)  # the same pixels without any signed statement
    assert planted.kind is VerdictKind.ATTRIBUTED and planted.evidence == "watermark"
    assert planted.to_dict()["evidence"] == "watermark"


def test_tags_naming_another_deployment_than_the_pixels(world, verifier, tmp_path):
    """Genuine tags of deployment B on an image that carries deployment A's key."""
    other = world.issue(deployment="site-b")
    study = world.write_study(tmp_path / "study.dcm", entry=other)
    verdict = verifier.verify_file(study.path)
    assert verdict.kind is VerdictKind.MISMATCH
    assert check(verdict, "tags_match_watermark").detail.startswith(f"the tags claim {other.provenance_id}")


def test_stripped_tags_follow_the_policy(world, extractor_dir, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    dataset = pydicom.dcmread(study.path)
    block = find_block(dataset)
    for element in list(Element):
        del dataset[block.get_tag(element)]
    del dataset[(block.group, block.block_start >> 8)]
    dataset.save_as(tmp_path / "stripped.dcm")
    assert find_block(pydicom.dcmread(tmp_path / "stripped.dcm")) is None
    default = verify_file(tmp_path / "stripped.dcm", registry=world.registry_dir, extractor=extractor_dir)
    assert default.kind is VerdictKind.ATTRIBUTED
    assert "ignores watermark_without_tags" in check(default, "tags_match_watermark").detail
    strict = verify_file(tmp_path / "stripped.dcm", registry=world.registry_dir, extractor=extractor_dir,
                         policy="strict")
    assert strict.kind is VerdictKind.MISMATCH


def test_real_dicom_without_provenance_is_not_detected(world, verifier, tmp_path):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = sample_image(902).tobytes()
    ds.save_as(tmp_path / "real.dcm", enforce_file_format=True)
    verdict = verifier.verify_file(tmp_path / "real.dcm")
    assert verdict.kind is VerdictKind.NOT_DETECTED
    assert check(verdict, "provenance_block").status.value == "skipped"
    assert verdict.claimed_provenance_id is None


def test_real_shared_images_are_not_attributed(world, verifier, real_data):
    """Real radiographs (the shared data folder) are never attributed, whatever the extractor reads."""
    files = sorted((real_data / "real-cxr-covid19-repo" / "png").glob("*.png"))[:5]
    files += sorted((real_data / "real-dicom").glob("*.dcm"))
    verdicts = [verifier.try_verify_file(path) for path in files]
    assert verdicts and not any(v.attributed for v in verdicts)
    assert all(v.kind is not VerdictKind.ERROR for v in verdicts), [v.error for v in verdicts]


def test_registered_pixels_in_tags_of_an_unknown_issuer_are_a_mismatch(world, verifier, tmp_path):
    """A forger wraps a genuine watermarked image in provenance signed by their own, unknown key."""
    forger = IssuerKey.generate("Forger")
    with Registry.open(tmp_path / "forger", create=True) as registry:
        entry = registry.issue(forger, model=MODEL, deployment="fake", policy=load_policy())
    study = world.write_study(tmp_path / "study.dcm", entry=entry, signer=forger)  # the planted (registered) pixels
    verdict = verifier.verify_file(study.path)
    assert verdict.kind is VerdictKind.MISMATCH and verdict.evidence == "watermark"
    assert "signed by an issuer unknown here" in check(verdict, "tags_match_watermark").detail
