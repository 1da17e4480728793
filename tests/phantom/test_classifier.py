"""The finding classifier: label order and encoding, shapes, learning, strict hashed save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.phantom.classifier import (
    LABEL_INDEX,
    LABELS,
    ClassifierConfig,
    FindingClassifier,
    decode_labels,
    encode_labels,
    extract_features,
    load_classifier,
    predict,
    save_classifier,
)
from medsign_forensics.phantom.classifier_data import study_labels, study_targets
from medsign_forensics.phantom.classifier_train import Augmentation, augment, train_step
from medsign_forensics.reports.findings import Finding, FindingKind, Severity, Side, Zone

TINY = ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), groups=4, image_size=64)


def test_label_order_is_fixed_and_complete() -> None:
    assert len(LABELS) == 19
    assert LABELS[:4] == ("nodule_right", "nodule_left", "mass_right", "mass_left")
    assert "cardiomegaly" in LABELS and "cardiomegaly_right" not in LABELS
    assert LABELS[-1] == "emphysema_left"


def test_bilateral_sets_both_sides_and_cardiomegaly_is_sideless() -> None:
    target = encode_labels(
        [
            Finding(FindingKind.EFFUSION, Side.BILATERAL, Zone.LOWER, Severity.SEVERE),
            Finding(FindingKind.CARDIOMEGALY),
            Finding(FindingKind.NODULE, Side.LEFT),
        ]
    )
    assert target.dtype == np.float32 and target.shape == (len(LABELS),)
    assert sorted(decode_labels(target)) == ["cardiomegaly", "effusion_left", "effusion_right", "nodule_left"]


def test_negated_and_uncertain_findings_are_ignored() -> None:
    target = encode_labels(
        [
            Finding(FindingKind.PNEUMOTHORAX, Side.RIGHT, negated=True),
            Finding(FindingKind.CONSOLIDATION, Side.LEFT, uncertain=True),
            Finding(FindingKind.CARDIOMEGALY, negated=True),
        ]
    )
    assert not target.any()


def test_unspecified_side_is_refused_by_encode_but_read_off_the_mask() -> None:
    finding = Finding(FindingKind.MASS)
    with pytest.raises(InputError, match="unspecified side"):
        encode_labels([finding])
    mask = np.zeros((32, 32), bool)
    mask[10:14, 3:8] = True  # image left = patient's right
    assert decode_labels(study_labels([(finding, mask)])) == ["mass_right"]
    empty = np.zeros((32, 32), bool)
    assert not study_labels([(Finding(FindingKind.NODULE, Side.LEFT), empty)]).any()


@pytest.mark.parametrize("shape", [(2, 1, 256, 256), (1, 1, 96, 160), (3, 1, 200, 120)])
def test_forward_and_features_shapes(shape: tuple[int, ...]) -> None:
    model = FindingClassifier().eval()
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (shape[0], len(LABELS))
        assert model.features(torch.rand(shape)).shape == (shape[0], model.config.feature_dim)


def test_default_model_is_well_under_five_megabytes_in_fp16(tmp_path) -> None:
    save_classifier(FindingClassifier(), tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 2_500_000


def test_predict_accepts_uint8_and_other_sizes() -> None:
    model = FindingClassifier(TINY)
    probabilities = predict(model, np.full((2, 100, 80), 128, np.uint8))
    assert probabilities.shape == (2, len(LABELS)) and probabilities.dtype == np.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert extract_features(model, np.zeros((64, 64), np.float32)).shape == (1, TINY.feature_dim)
    with pytest.raises(InputError):
        predict(model, np.zeros((2, 3, 64, 64), np.float32))


def test_a_few_training_steps_lower_both_losses_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    config = ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), map_stage=0, groups=4, image_size=64, dropout=0.0)
    model = FindingClassifier(config)
    images = torch.rand(8, 1, 64, 64)
    targets = (torch.rand(8, len(LABELS)) < 0.2).float()
    masks = torch.zeros(8, len(LABELS), 32, 32, dtype=torch.bool)
    masks[:, 3, 4:9, 2:6] = True  # coarser than the 8x8 map: max-pooled to it
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [train_step(model, optimizer, images, targets, masks, mask_weight=1.0, mask_pos_weight=5.0)
              for _ in range(25)]
    assert losses[-1][0] < 0.7 * losses[0][0]
    assert losses[-1][1] < 0.7 * losses[0][1]
    assert train_step(model, optimizer, images, targets)[1] == 0.0  # no masks: labels only


def test_map_head_gives_one_coarse_map_per_label() -> None:
    model = FindingClassifier().eval()  # map_stage 1: 256 / 2**3 = 32 cells
    with torch.no_grad():
        logits, maps = model.forward_with_maps(torch.rand(2, 1, 256, 256))
    assert logits.shape == (2, len(LABELS)) and maps is not None and maps.shape == (2, len(LABELS), 32, 32)
    with pytest.raises(InputError, match="map_stage"):
        ClassifierConfig(map_stage=4)


def test_augmentation_is_mild_seeded_and_in_range() -> None:
    images = torch.rand(6, 1, 32, 32)
    a = augment(images, Augmentation(), torch.Generator().manual_seed(3))
    b = augment(images, Augmentation(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert (a - images).abs().mean() < 0.15


def test_save_load_round_trip_is_strict_and_hashed(tmp_path) -> None:
    model = FindingClassifier(TINY).eval()
    digest = save_classifier(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["weights_sha256"] == digest and meta["config"]["labels"] == list(LABELS)
    loaded = load_classifier(tmp_path)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        # fp16 storage: the logits agree to half precision, not bit for bit.
        assert torch.allclose(loaded(x), model(x), atol=2e-2)


def test_tampered_weights_fail_the_hash_check(tmp_path) -> None:
    save_classifier(FindingClassifier(TINY), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash check"):
        load_classifier(tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path) -> None:
    save_classifier(FindingClassifier(TINY), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["channels"] = [8, 16, 32]  # hash still matches, keys/shapes do not
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit"):
        load_classifier(tmp_path)


def test_missing_weights_folder_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="config.json is missing"):
        load_classifier(tmp_path / "nowhere")
    save_classifier(FindingClassifier(TINY), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="weights are missing"):
        load_classifier(tmp_path)


def test_label_masks_follow_the_drawn_side_on_a_coarse_grid() -> None:
    mask = np.zeros((256, 256), bool)
    mask[200:240, 20:236] = True  # spans both image halves
    both = Finding(FindingKind.EFFUSION, Side.BILATERAL)
    labels, masks = study_targets([(both, mask), (Finding(FindingKind.CARDIOMEGALY), mask)])
    assert masks.shape == (len(LABELS), 32, 32) and masks.dtype == bool
    right, left = masks[LABEL_INDEX["effusion_right"]], masks[LABEL_INDEX["effusion_left"]]
    assert right[:, :16].any() and not right[:, 16:].any()  # patient's right = image-left half only
    assert left[:, 16:].any() and not left[:, :16].any()
    assert masks[LABEL_INDEX["cardiomegaly"]].sum() == right.sum() + left.sum()
    assert masks[LABEL_INDEX["cardiomegaly"]][25:30].all(axis=0)[3:29].all()  # block-any: partial cells count
    assert set(decode_labels(labels)) == {"effusion_right", "effusion_left", "cardiomegaly"}
    assert not masks[LABEL_INDEX["nodule_left"]].any()


def test_label_index_matches_order() -> None:
    assert all(LABELS[i] == name for name, i in LABEL_INDEX.items())


def test_max_taps_are_validated_and_widen_the_features() -> None:
    with pytest.raises(InputError, match="max_taps"):
        ClassifierConfig(channels=(8, 16, 16), max_taps=(1,), groups=4)  # stage 1 is the final stage
    with pytest.raises(InputError, match="max_taps"):
        ClassifierConfig(channels=(8, 16, 16, 16), max_taps=(0, 0), groups=4)
    plain = ClassifierConfig(channels=(8, 16, 16), max_taps=(), groups=4)
    tapped = ClassifierConfig(channels=(8, 16, 16), max_taps=(0,), groups=4)
    assert tapped.feature_dim == plain.feature_dim + 2 * 16
    with torch.no_grad():
        assert FindingClassifier(tapped).features(torch.rand(1, 1, 64, 64)).shape == (1, tapped.feature_dim)
