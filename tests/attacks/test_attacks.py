import numpy as np
import pytest
import torch

from medsign_forensics.attacks.base import Compose
from medsign_forensics.attacks.geometric import Measure
from medsign_forensics.attacks.library import TABLE1_ATTACKS, get_attack, parse_attack, parse_attack_list
from medsign_forensics.attacks.storage import DicomWindow
from medsign_forensics.errors import InputError

ALL_NAMES = [
    "none", "brightness_x2", "brightness_x0.6", "contrast_x0.5", "contrast_x1.5", "gamma_0.7", "gamma_1.5",
    "crop_center_area0.5", "crop_center_edge0.5", "crop_random_area0.3", "crop_random_edge0.7",
    "resize_edge0.7", "resize_area0.5", "resize_edge1.5", "rotate_25", "rotate_-90", "jpeg_q50", "jpeg_q90",
    "blur_sigma1_k5", "blur_sigma2_k9", "noise_sigma0.05", "grey", "requant_8bit", "requant_12bit",
    "dicomwl_c2048_w4096", "dicomwl_c1500_w2000", "jpeg_q80+brightness_x1.5+crop_center_area0.5",
]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:120] / 96.0
    picture = 0.5 + 0.3 * np.sin(9 * xx) * np.cos(5 * yy) + 0.04 * rng.normal(size=xx.shape)
    return np.clip(picture, 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_names_round_trip(name):
    attack = parse_attack(name)
    assert attack.name == name
    assert parse_attack(attack.name) == attack


@pytest.mark.parametrize("name", ALL_NAMES)
def test_exact_and_differentiable_forms_agree(name, image):
    attack = get_attack(name)
    exact = attack.exact(image, np.random.default_rng(5))
    soft = attack.differentiable(torch.from_numpy(image)[None, None], np.random.default_rng(5))[0, 0].numpy()
    assert exact.shape == soft.shape and exact.dtype == np.float32
    assert 0 <= exact.min() and exact.max() <= 1
    gap = np.abs(exact - soft).mean()
    if exact.shape == image.shape:
        effect = np.abs(exact - image).mean()
        assert gap <= 0.1 * effect + 1e-4, f"forms differ by {gap:.4f}, attack changes the image by {effect:.4f}"
    else:
        assert gap <= 2e-3  # size-changing attacks: same pixels up to resampler rounding


@pytest.mark.parametrize("name", ALL_NAMES)
def test_differentiable_forms_pass_gradients(name, image):
    x = torch.from_numpy(image)[None, None].repeat(2, 1, 1, 1).requires_grad_(True)
    get_attack(name).differentiable(x, np.random.default_rng(0)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_table1_is_exactly_the_paper_set():
    assert [a.name for a in TABLE1_ATTACKS] == [
        "none", "brightness_x2", "crop_center_area0.5", "jpeg_q50", "rotate_25", "resize_edge0.7"
    ]


def test_area_and_edge_fractions_differ(image):
    area = get_attack("crop_center_area0.25").exact(image)
    edge = get_attack("crop_center_edge0.25").exact(image)
    assert area.shape == (48, 60)  # edge factor sqrt(0.25) = 0.5
    assert edge.shape == (24, 30)
    assert Measure.AREA.edge_factor(0.5) == pytest.approx(0.7071, abs=1e-4)


def test_centre_crop_is_centred(image):
    out = get_attack("crop_center_edge0.5").exact(image)
    assert np.array_equal(out, image[24:72, 30:90])


def test_rotation_is_counter_clockwise_and_fills_black():
    square = np.zeros((33, 33), np.float32)
    square[2:6, 14:19] = 1.0  # a blob at the top centre
    rotated = get_attack("rotate_90").exact(square)
    rows, cols = np.nonzero(rotated > 0.5)
    assert cols.mean() < 8 and abs(rows.mean() - 16) < 2  # top -> left
    corners = get_attack("rotate_45").exact(np.ones((33, 33), np.float32))
    assert corners[0, 0] == 0.0


def test_jpeg_uses_the_real_codec(image):
    out = get_attack("jpeg_q50").exact(image)
    assert np.allclose(out * 255, np.rint(out * 255), atol=1e-4)  # 8-bit output
    assert 0.002 < np.abs(out - image).mean() < 0.05


def test_dicom_window_matches_the_standard_formula():
    attack = DicomWindow(center=2048, width=1024)
    low, high = 2048 - 0.5 - 1023 / 2, 2048 - 0.5 + 1023 / 2
    stored = np.array([0, int(low), int(low) + 1, 2048, int(high), int(high) + 1, 4095], dtype=np.float64)
    out = attack.exact((stored / 4095).astype(np.float32).reshape(1, -1))[0] * 255
    expected = np.clip(np.rint(((stored - 2047.5) / 1023 + 0.5) * 255), 0, 255)
    expected[stored <= low] = 0
    expected[stored > high] = 255
    assert np.allclose(out, expected, atol=1e-3)
    full = get_attack("dicomwl_c2048_w4096").exact(np.linspace(0, 1, 50, dtype=np.float32)[None])
    assert np.allclose(full, np.rint(np.rint(np.linspace(0, 1, 50) * 4095) * 255 / 4095) / 255, atol=1e-6)


def test_greyscale_converts_rgb_with_bt601():
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[..., 1] = 1.0  # pure green
    assert np.allclose(get_attack("grey").exact(rgb), 150 / 255)  # round(0.587 * 255)
    soft = get_attack("grey").differentiable(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    assert soft.shape == (1, 1, 4, 4) and torch.allclose(soft, torch.tensor(150 / 255))


def test_random_attacks_need_a_seeded_generator(image):
    with pytest.raises(InputError, match="seeded"):
        get_attack("noise_sigma0.1").exact(image)
    a = get_attack("crop_random_area0.5").exact(image, np.random.default_rng(1))
    b = get_attack("crop_random_area0.5").exact(image, np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_composition_applies_in_order_and_flattens(image):
    composed = parse_attack("brightness_x2+crop_center_edge0.5")
    assert isinstance(composed, Compose) and len(composed.attacks) == 2
    manual = get_attack("crop_center_edge0.5").exact(get_attack("brightness_x2").exact(image))
    assert np.array_equal(composed.exact(image), manual)
    assert Compose([composed, get_attack("jpeg_q50")]).name == "brightness_x2+crop_center_edge0.5+jpeg_q50"


@pytest.mark.parametrize("bad", ["", "jpeg", "jpeg_q0", "jpeg_q50.5", "crop_center0.5", "rotate_x", "blur_sigma1_k4"])
def test_bad_names_are_rejected(bad):
    with pytest.raises(InputError):
        parse_attack(bad)


def test_attack_list():
    assert [a.name for a in parse_attack_list("none, jpeg_q50")] == ["none", "jpeg_q50"]
    with pytest.raises(InputError):
        parse_attack_list(" , ")
