from __future__ import annotations

from pathlib import Path

import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.provenance.policy import (
    POLICIES_DIR,
    Attribution,
    TamperAction,
    TamperEvent,
    load_policy,
)


def test_shipped_policies_load_with_their_documented_values() -> None:
    default, strict = load_policy(), load_policy("strict")
    assert (default.family_wise_fpr, default.inconclusive_p, default.min_hamming_distance) == (1e-6, 1e-3, 8)
    assert (strict.family_wise_fpr, strict.inconclusive_p, strict.min_hamming_distance) == (1e-9, 1e-6, 10)
    for policy in (default, strict):
        assert policy.key_bits == 48
        assert policy.action(TamperEvent.SIGNATURE_INVALID) is TamperAction.TAMPERED
        assert policy.action(TamperEvent.PIXEL_HASH_MISMATCH) is TamperAction.TAMPERED
    assert default.action(TamperEvent.WATERMARK_WITHOUT_TAGS) is TamperAction.IGNORE
    assert strict.action(TamperEvent.WATERMARK_WITHOUT_TAGS) is TamperAction.MISMATCH


def test_every_policy_field_is_documented() -> None:
    readme = (POLICIES_DIR / "README.md").read_text()
    for name in ("format_version", "name", "description", "bits", "min_hamming_distance", "family_wise_fpr",
                 "inconclusive_p", "correction", *(event.value for event in TamperEvent)):
        assert f"`{name}`" in readme, name


def test_classify_uses_the_two_thresholds() -> None:
    policy = load_policy()
    assert policy.classify(1e-7) is Attribution.ATTRIBUTED
    assert policy.classify(1e-6) is Attribution.ATTRIBUTED
    assert policy.classify(1e-4) is Attribution.INCONCLUSIVE
    assert policy.classify(0.5) is Attribution.NOT_DETECTED


def _write(tmp_path: Path, old: str, new: str) -> Path:
    text = (POLICIES_DIR / "default.toml").read_text()
    assert old in text
    path = tmp_path / "custom.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ("correction = \"bonferroni\"", "correction = \"holm\"", "attribution.correction must be one of"),
    ("family_wise_fpr = 1e-6", "family_wise_fpr = 2e-3", "inconclusive_p must be at least"),
    ("family_wise_fpr = 1e-6", "family_wise_fpr = 0", r"family_wise_fpr must be in \(0, 1\)"),
    ("min_hamming_distance = 8", "min_hamming_distance = 20", "min_hamming_distance must be between"),
    ("min_hamming_distance = 8", "min_hamming_distance = \"8\"", "must be an integer"),
    ("bits = 48", "bits = 40", "key length 40 is not supported"),
    ("signature_invalid = \"tampered\"", "signature_invalid = \"ignore\"", "cannot be 'ignore'"),
    ("signature_invalid = \"tampered\"", "signature_invalid = \"tampered\"\nsignature_invalidd = \"x\"",
     "unknown field"),
    ("pixel_hash_mismatch = \"tampered\"\n", "", "lacks field"),
    ("format_version = 1", "format_version = 2", "format_version must be 1"),
    ("[tamper]", "[tamper", "not valid TOML"),
])
def test_bad_policies_name_the_file_and_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _write(tmp_path, old, new)
    with pytest.raises(InputError, match=message) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_unknown_policy_name_and_missing_file() -> None:
    with pytest.raises(InputError, match="unknown policy 'lenient'.*default"):
        load_policy("lenient")
    with pytest.raises(InputError, match="policy file not found"):
        load_policy("/nonexistent/policy.toml")
