import numpy as np
import pytest
from scipy.ndimage import correlate

from medsign_forensics.attacks.codec import quantise
from medsign_forensics.evaluate.metrics import (
    Detection,
    MeanOf,
    kind_confidences,
    region_differences,
)
from medsign_forensics.key import match_counts
from medsign_forensics.watermark.fidelity import psnr, ssim


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5), population statistics, valid region."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(image):
        return correlate(image, window, mode="constant")[5:-5, 5:-5]

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def test_psnr_and_ssim_follow_their_definitions():
    rng = np.random.default_rng(0)
    a = rng.random((40, 48))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, b) == pytest.approx(_reference_ssim(a, b), abs=1e-4)


def test_quantise_and_means():
    assert np.array_equal(quantise(np.array([[0.0, 0.5, 1.2]])) * 255, np.array([[0.0, 128.0, 255.0]], np.float32))
    mean = MeanOf.of([30.0, float("inf"), 50.0])
    assert mean.mean == 40.0 and mean.count == 2 and mean.excluded == 1
    assert MeanOf.of([]).mean is None


def test_detection_uses_the_binomial_threshold():
    key = np.zeros(48, np.uint8)
    bits = np.zeros((4, 48), np.uint8)
    bits[1, :7] = 1  # 41 matches: the threshold at FPR 1e-6
    bits[2, :8] = 1  # 40 matches: not enough
    bits[3] = 1
    counts = match_counts(bits, key)
    assert counts.tolist() == [48, 41, 40, 0]
    detection = Detection.of(counts, 48, 1e-6)
    assert detection.threshold == 41 and detection.detected == 2 and detection.rate == 0.5
    assert Detection.of(np.array([]), 48, 1e-6).rate is None


def test_region_differences_and_kind_confidences():
    original = np.zeros((4, 4))
    watermarked = original.copy()
    watermarked[:2] = 0.2
    a_loc = np.zeros((4, 4))
    a_loc[:2] = 0.7
    assert region_differences(original, watermarked, a_loc) == pytest.approx((0.2, 0.0))
    assert region_differences(original, watermarked, np.zeros((4, 4))) is None
    assert region_differences(original, watermarked, np.ones((4, 4))) is None
    labels = ["nodule_right", "nodule_left", "cardiomegaly"]
    probabilities = np.array([[0.1, 0.7, 0.3], [0.4, 0.2, 0.9]])
    assert kind_confidences(probabilities, labels, ["nodule", "cardiomegaly"]).tolist() == [[0.7, 0.3], [0.4, 0.9]]
