"""Forgery suite: every forgery of issue 7 applied to a genuine generated study, each verified; all must be flagged.

Cases (expected verdict under the default policy unless said otherwise):

- genuine study; its PNG export                                   -> attributed
- provenance tags copied onto a real radiograph                   -> mismatch
- pixels edited after generation (1% of the image brightened)     -> tampered, the watermark still attributes
- one byte of the record signature flipped; of the statement's    -> tampered
- report text in the block edited; SOP Instance UID changed       -> tampered
- the deployment revoked in the registry                          -> revoked
- these pixels wrapped in tags of a registry this verifier does   -> mismatch (the unverifiable tags claim another
  not know                                                          deployment than the pixels carry)
- genuine tags of another deployment on these pixels              -> mismatch
- provenance tags stripped                                         -> attributed (default), mismatch (strict)

Two modes:

* real (the trained pipeline): ``--deployment DIR --issuer-key FILE [--registry DIR] [--extractor DIR]`` with
  MEDSIGN_PASSPHRASE set; a study is generated with `medsign generate`'s library call. The registry is copied to
  a temporary folder before keys are revoked or issued there.
* planted (default, no trained weights needed): a tiny random whitened extractor and a registry key planted to
  equal what that extractor reads from a test image (medsign_forensics.evaluate.synthetic.build_world, as the
  verification tests use). This checks the DICOM and decision logic end to end, not watermark robustness; the
  results file says which mode ran.

    python benchmarks/forgery_suite.py [--deployment DIR --issuer-key FILE --extractor DIR --registry DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from medsign_forensics.evaluate.synthetic import build_extractor, build_world
from medsign_forensics.training.environment import machine_line

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Genuine:
    """A genuine study and what is needed to forge around it."""

    registry: Path  # a private copy: the suite revokes and issues keys in it
    extractor: Path
    issuer: object  # a decrypted IssuerKey of the registry
    study: Path
    png: Path
    provenance_id: str


def _planted(tmp: Path) -> Genuine:
    world = build_world(tmp / "world", build_extractor(tmp / "extractor"))
    study = world.write_study(tmp / "genuine.dcm")
    return Genuine(registry=world.registry_dir, extractor=world.extractor_dir, issuer=world.issuer,
                   study=study.path, png=world.planted_png, provenance_id=world.planted.provenance_id)


def _real(tmp: Path, args: argparse.Namespace) -> Genuine:
    from medsign_forensics.generate import generate_study
    from medsign_forensics.provenance.keys import load_issuer_key, passphrase_from_env
    from medsign_forensics.verify import DEFAULT_REGISTRY_DIR

    passphrase = passphrase_from_env()
    if passphrase is None:
        raise SystemExit("set MEDSIGN_PASSPHRASE to the issuer key's passphrase")
    registry = tmp / "registry"
    shutil.copytree(args.registry or DEFAULT_REGISTRY_DIR, registry)
    issuer = load_issuer_key(args.issuer_key, passphrase)
    made = generate_study(report="Small right pleural effusion. No pneumothorax.", out=tmp / "genuine.dcm",
                          signer=issuer, deployment=args.deployment, registry=registry, seed=11,
                          png=tmp / "genuine.png")
    return Genuine(registry=registry, extractor=args.extractor, issuer=issuer, study=made.study.path,
                   png=made.png, provenance_id=made.provenance_id)


def _real_radiograph(shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    folder = REPO.parent / "shared" / "data" / "real-cxr-covid19-repo" / "png"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if files:
        with Image.open(files[0]) as image:
            grey = image.convert("L").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
        return np.asarray(grey, dtype=np.uint8), f"real radiograph {files[0].name}"
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, shape, dtype=np.uint8), "random image (shared data absent)"


def _save(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path)
    return path


def _flip(dataset: pydicom.Dataset, element) -> pydicom.Dataset:
    from medsign_forensics.dicom.private import find_block

    block = find_block(dataset)
    value = bytearray(block[element].value)
    value[10] ^= 0x01
    block[element].value = bytes(value)
    return dataset


def run(genuine: Genuine, tmp: Path) -> list[tuple[str, str, str, bool, str]]:
    """(case, expected, verdict, ok, detail) for every forgery."""
    from medsign_forensics.dicom import write_synthetic_study
    from medsign_forensics.dicom.private import Element, find_block
    from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, load_policy
    from medsign_forensics.verify import Verifier

    original = pydicom.dcmread(genuine.study)
    pixels = original.pixel_array
    record = find_block(original)
    cases: list[tuple[str, str, Path, str]] = [
        ("genuine study", "attributed", genuine.study, "default"),
        ("genuine PNG export", "attributed", genuine.png, "default"),
    ]
    real, real_label = _real_radiograph(pixels.shape)
    copied = pydicom.dcmread(genuine.study)
    copied.PixelData = real.astype(pixels.dtype).tobytes()
    cases.append((f"provenance tags copied onto a {real_label}", "mismatch", _save(copied, tmp / "copied.dcm"),
                  "default"))
    edited = pydicom.dcmread(genuine.study)
    patch = pixels.copy()
    h, w = patch.shape
    size = max(4, min(h, w) // 10)  # a small "lesion": 1% of the image
    region = (slice(h // 2, h // 2 + size), slice(w // 3, w // 3 + size))
    patch[region] = np.clip(patch[region].astype(int) + 40, 0, np.iinfo(patch.dtype).max)
    edited.PixelData = patch.tobytes()
    cases.append(("pixels edited after generation", "tampered", _save(edited, tmp / "edited.dcm"), "default"))
    cases.append(("record signature byte flipped", "tampered",
                  _save(_flip(pydicom.dcmread(genuine.study), Element.RECORD_SIGNATURE), tmp / "flip-record.dcm"),
                  "default"))
    cases.append(("statement signature byte flipped", "tampered",
                  _save(_flip(pydicom.dcmread(genuine.study), Element.STATEMENT_SIGNATURE), tmp / "flip-stmt.dcm"),
                  "default"))
    report_edit = pydicom.dcmread(genuine.study)
    find_block(report_edit)[Element.REPORT_TEXT].value = "No pleural effusion."
    cases.append(("report text edited", "tampered", _save(report_edit, tmp / "report.dcm"), "default"))
    uid_edit = pydicom.dcmread(genuine.study)
    uid_edit.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None)
    uid_edit.file_meta.MediaStorageSOPInstanceUID = uid_edit.SOPInstanceUID
    cases.append(("SOP Instance UID changed", "tampered", _save(uid_edit, tmp / "uid.dcm"), "default"))
    stripped = pydicom.dcmread(genuine.study)
    block = find_block(stripped)
    for element in Element:
        del stripped[block.get_tag(element)]
    del stripped[(block.group, block.block_start >> 8)]
    _save(stripped, tmp / "stripped.dcm")
    cases.append(("provenance tags stripped", "attributed", tmp / "stripped.dcm", "default"))
    cases.append(("provenance tags stripped (strict policy)", "mismatch", tmp / "stripped.dcm", "strict"))

    claimed = record[Element.RECORD].value
    model = ModelInfo.from_dict(json.loads(claimed)["model"])
    forger = IssuerKey.generate("Forger Ltd")
    with Registry.open(tmp / "forger-registry", create=True) as other:
        fake = other.issue(forger, model=model, deployment="fake-site", policy=load_policy())
    unknown = write_synthetic_study(tmp / "unknown.dcm", image=pixels, report_text="Forged.", model_name=model.name,
                                    model_version=model.version, weights_sha256=model.weights_sha256,
                                    provenance=fake.signed_record, signer=forger)
    cases.append(("signed under a registry the verifier does not know", "mismatch", unknown.path, "default"))
    with Registry.open(genuine.registry) as registry:
        other_entry = registry.issue(genuine.issuer, model=model, deployment="another-site", policy=load_policy())
    other_tags = write_synthetic_study(tmp / "other-tags.dcm", image=pixels, report_text="Other.",
                                       model_name=model.name, model_version=model.version,
                                       weights_sha256=model.weights_sha256, provenance=other_entry.signed_record,
                                       signer=genuine.issuer)
    cases.append(("genuine tags of another deployment on these pixels", "mismatch", other_tags.path, "default"))

    results = []
    for policy in ("default", "strict"):
        with Verifier.open(registry=genuine.registry, extractor=genuine.extractor, policy=policy) as verifier:
            for name, expected, path, case_policy in cases:
                if case_policy == policy:
                    verdict = verifier.verify_file(path)
                    failed = [c.name for c in verdict.checks if c.status.value == "fail"]
                    pixels_say = f"attributed to {verdict.provenance_id}" if verdict.attributed else "not attributed"
                    detail = (f"{verdict.matched_bits}/{verdict.match.bits} bits, p {verdict.p_value:.1e}, pixels "
                              f"{pixels_say}; failed: {', '.join(failed) or 'none'}") if verdict.match else \
                        ", ".join(failed)
                    results.append((name, expected, verdict.kind.value, verdict.kind.value == expected, detail))
    with Registry.open(genuine.registry) as registry:
        registry.revoke(genuine.provenance_id, genuine.issuer, reason="forgery suite: revoked deployment")
    with Verifier.open(registry=genuine.registry, extractor=genuine.extractor) as verifier:
        verdict = verifier.verify_file(genuine.study)
    results.append(("the deployment revoked in the registry", "revoked", verdict.kind.value,
                    verdict.kind.value == "revoked", "registry_entry fails"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployment", type=Path)
    parser.add_argument("--issuer-key", type=Path)
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--extractor", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "forgery_suite.md")
    args = parser.parse_args()
    real = args.deployment is not None
    if real and (args.issuer_key is None or args.extractor is None):
        raise SystemExit("the real mode needs --deployment, --issuer-key and --extractor")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        genuine = _real(tmp_path, args) if real else _planted(tmp_path)
        results = run(genuine, tmp_path)
    flagged = sum(ok for *_, ok, _ in results)
    command = "python benchmarks/forgery_suite.py" + (
        f" --deployment {args.deployment} --issuer-key ISSUER_KEY --extractor {args.extractor}"
        + (f" --registry {args.registry}" if args.registry else "") if real else "")
    lines = [
        "# Forgery suite",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}",
        f"- command: `{command}`",
        "- mode: " + ("real: a study generated by the given deployment, verified with the given extractor" if real
                      else "planted: tiny random whitened extractor, registry key planted to equal what it reads "
                           "(tests the provenance and decision logic, not watermark robustness)"),
        "",
        f"**{flagged} of {len(results)} cases gave the expected verdict.**",
        "",
        "| case | expected | verdict | ok | evidence |",
        "| --- | --- | --- | --- | --- |",
    ] + [f"| {name} | {expected} | {verdict} | {'yes' if ok else 'NO'} | {detail} |"
         for name, expected, verdict, ok, detail in results]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
