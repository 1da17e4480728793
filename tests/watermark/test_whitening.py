import numpy as np
import pytest
import torch

from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenExtractor
from medsign_forensics.watermark.whitening import Whitening, fit_whitening, whiten_extractor


def biased_correlated(n: int, k: int, seed: int, *, sample_seed: int = 100) -> np.ndarray:
    """Gaussian outputs with a fixed (per ``seed``) mean and correlation; ``sample_seed`` draws the samples."""
    structure = np.random.default_rng(seed)
    mixing = structure.normal(size=(k, k)) + 3 * np.eye(k)
    mean = structure.normal(6.0, 1.0, size=k)
    return np.random.default_rng(sample_seed).normal(size=(n, k)) @ mixing.T + mean


def unit_variances(fit: Whitening) -> np.ndarray:
    """Expected whitened covariance: identity, except directions under the eigenvalue floor keep lambda / floor."""
    return np.diag(np.minimum(1.0, fit.eigenvalues / fit.floor))


def test_whitening_gives_zero_mean_identity_covariance_and_fair_bits():
    k = 48
    outputs = biased_correlated(20_000, k, seed=0)
    assert np.abs((outputs > 0).mean(axis=0) - 0.5).max() > 0.2  # really biased before
    fit = fit_whitening(outputs)
    white = fit.apply(outputs)
    assert np.allclose(white.mean(axis=0), 0, atol=1e-8)
    assert np.allclose(np.cov(white, rowvar=False, ddof=1), unit_variances(fit), atol=1e-8)  # divided by N - 1
    held_out = fit.apply(biased_correlated(20_000, k, seed=0, sample_seed=7))
    assert np.abs((held_out > 0).mean(axis=0) - 0.5).max() < 0.025
    assert np.abs(np.corrcoef(held_out, rowvar=False) - np.eye(k)).max() < 0.05


def test_weight_and_bias_follow_the_paper():
    outputs = biased_correlated(500, 8, seed=2)
    fit = fit_whitening(outputs)
    covariance = np.cov(outputs, rowvar=False, ddof=1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    expected = np.diag(eigenvalues**-0.5) @ eigenvectors.T
    assert np.allclose(np.abs(fit.weight), np.abs(expected))  # eigenvector signs are arbitrary
    assert np.allclose(fit.bias, -fit.weight @ outputs.mean(axis=0))


def test_too_few_samples_and_degenerate_outputs_are_refused():
    with pytest.raises(InputError):
        fit_whitening(np.random.default_rng(0).normal(size=(10, 48)))
    degenerate = np.random.default_rng(0).normal(size=(200, 4)) @ np.ones((4, 8))  # rank 4 of 8
    with pytest.raises(ModelError):
        fit_whitening(degenerate)


def test_whiten_extractor_attaches_a_layer_that_whitens_its_outputs():
    torch.manual_seed(0)
    extractor = HiddenExtractor(HiddenConfig(bits=32))
    images = torch.rand(96, 1, 32, 32) * torch.linspace(0.3, 1.0, 96).view(-1, 1, 1, 1)
    for module in extractor.modules():  # exact BatchNorm statistics, as recalibration leaves them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        extractor(images)
    extractor.eval()
    fit = whiten_extractor(extractor, torch.split(images, 32))
    assert extractor.whitened and fit.n_samples == 96
    with torch.no_grad():
        white = extractor(images).double().numpy()
    assert np.allclose(white.mean(axis=0), 0, atol=1e-3)
    assert np.allclose(np.cov(white, rowvar=False), unit_variances(fit), atol=2e-2)


def test_near_constant_directions_keep_their_signs_but_not_a_huge_gain():
    rng = np.random.default_rng(3)
    k = 12
    scales = np.r_[np.full(3, 5.0), np.full(k - 3, 1e-4)]  # three live directions, nine near-constant ones
    rotation = np.linalg.qr(rng.normal(size=(k, k)))[0]
    outputs = (rng.normal(size=(4000, k)) * scales) @ rotation.T + 2.0
    fit = fit_whitening(outputs)
    covariance = np.cov(outputs, rowvar=False, ddof=1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    exact = (outputs - outputs.mean(axis=0)) @ (eigenvectors / np.sqrt(eigenvalues))
    floored = fit.apply(outputs)
    # same eigenbasis (up to each vector's sign), so every bit agrees with exact whitening up to that flip
    agreement = ((floored > 0) == (exact > 0)).mean(axis=0)
    assert np.all((agreement == 1.0) | (agreement == 0.0))
    # a watermark-sized push (0.1 in raw logits) stays a moderate logit instead of a 1,000-fold one
    pushed = fit.apply(outputs[:1] + 0.1) - fit.apply(outputs[:1])
    assert np.abs(pushed).max() < 10
    assert fit.summary()["floored_directions"] == k - 3
