import numpy as np
import pytest
import scipy.fft
import torch
from torch.nn import functional as F

from medsign_forensics.config import LossWeights
from medsign_forensics.errors import InputError
from medsign_forensics.watermark.losses import (
    WATSON_T,
    block_dct,
    decoder_objective,
    message_loss,
    preservation_loss,
    tv_loss,
    watson_loss,
)


def _smooth(size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, size // 8, size // 8, generator=generator)
    return (0.2 + 0.6 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)).clamp(0, 1)


def test_block_dct_is_the_orthonormal_dct_of_each_block_with_replicate_padding():
    images = torch.rand(2, 1, 20, 16, dtype=torch.float64)
    coefficients = block_dct(images)
    assert coefficients.shape == (2, 1, 3, 2, 8, 8)
    block = images[1, 0, 8:16, 8:16].numpy()
    assert np.allclose(coefficients[1, 0, 1, 1].numpy(), scipy.fft.dctn(block, norm="ortho"), atol=1e-10)
    padded = np.pad(images[0, 0].numpy(), ((0, 4), (0, 0)), mode="edge")[16:24, 0:8]
    assert np.allclose(coefficients[0, 0, 2, 0].numpy(), scipy.fft.dctn(padded, norm="ortho"), atol=1e-10)


def test_watson_is_zero_for_identical_images_and_grows_with_the_distortion():
    original = _smooth()
    assert float(watson_loss(original.clone(), original)) == 0.0
    noise = torch.randn_like(original, generator=torch.Generator().manual_seed(1))
    small = watson_loss((original + 0.002 * noise).clamp(0, 1), original)
    large = watson_loss((original + 0.02 * noise).clamp(0, 1), original)
    assert 0 < float(small) < float(large)


def _basis(u: int, v: int) -> torch.Tensor:
    """The pixel pattern whose orthonormal 8 x 8 DCT is 1 at (u, v) and 0 elsewhere, in [0, 1] units per grey level."""
    unit = np.zeros((8, 8))
    unit[u, v] = 1.0
    return torch.from_numpy(scipy.fft.idctn(unit, norm="ortho") / 255.0).reshape(1, 1, 8, 8)


def test_watson_uses_the_published_thresholds_and_masking():
    # Where the original's coefficient is 0, no contrast masking applies: a unit change of coefficient (u, v)
    # costs exactly 1 / t_uv (a black block for the DC term, whose own magnitude masks it otherwise).
    flat = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    black = torch.zeros_like(flat)
    assert float(watson_loss(black + _basis(0, 0), black)) == pytest.approx(1 / WATSON_T[0][0], rel=1e-6)
    assert float(watson_loss(flat + _basis(7, 7), flat)) == pytest.approx(1 / WATSON_T[7][7], rel=1e-6)
    # The DC term is masked by its own magnitude (w = 0.7 at every frequency, as Czolbe et al.).
    masked = (flat.mean() * 255 * 8) ** 0.7 * WATSON_T[0][0] ** 0.3
    assert float(watson_loss(flat + _basis(0, 0), flat)) == pytest.approx(1 / float(masked), rel=1e-6)
    # Contrast masking: the same perturbation hides better in a textured image than in a flat one.
    textured = (0.5 + 0.2 * torch.sign(torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(2)))).double()
    flat64 = torch.full_like(textured, 0.5)
    delta = 0.01 * torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3)).double()
    assert float(watson_loss(textured + delta, textured)) < float(watson_loss(flat64 + delta, flat64))
    # Luminance masking: a block brighter than the image's mean tolerates more (t scales with DC ** 0.649).
    two = torch.cat([torch.full((1, 1, 8, 8), 0.2), torch.full((1, 1, 8, 8), 0.8)], dim=3).double()
    dark, bright = two.clone(), two.clone()
    dark[..., :8] += _basis(3, 3)[0, 0]
    bright[..., 8:] += _basis(3, 3)[0, 0]
    assert float(watson_loss(bright, two)) < float(watson_loss(dark, two))


def test_watson_gradient_descent_moves_towards_the_original():
    original = _smooth(32)
    image = (original + 0.05 * torch.randn_like(original, generator=torch.Generator().manual_seed(4))).requires_grad_()
    before = watson_loss(image, original)
    before.backward()
    with torch.no_grad():
        after = watson_loss(image - 1e-4 * image.grad, original)
    assert float(after) < float(before.detach())


def test_message_loss_is_bce_of_logits_over_temperature():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    key = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = F.binary_cross_entropy_with_logits(logits / 0.5, key[None])
    assert torch.allclose(message_loss(logits, key, temperature=0.5), expected)
    agreeing = torch.tensor([[3.0, -3.0, -3.0, 3.0]])
    assert float(message_loss(agreeing, key, temperature=1.0)) < float(message_loss(-agreeing, key, temperature=1.0))
    with pytest.raises(InputError):
        message_loss(logits, key, temperature=0.0)
    with pytest.raises(InputError):
        message_loss(logits, key[:3], temperature=1.0)


def test_tv_ignores_a_uniform_offset_and_penalises_a_checkerboard():
    original = _smooth(16)
    assert float(tv_loss(original + 0.01, original)) == pytest.approx(0.0, abs=1e-7)
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float()[None, None]
    assert float(tv_loss(original + 0.01 * checker, original)) == pytest.approx(0.02, rel=1e-4)


def test_preservation_weighs_the_difference_by_the_map():
    original = _smooth(16)
    watermarked = original + 0.1
    assert float(preservation_loss(watermarked, original, torch.zeros(1, 1, 16, 16))) == 0.0
    assert float(preservation_loss(watermarked, original, torch.ones(1, 1, 16, 16))) == pytest.approx(0.01, rel=1e-5)
    half = torch.zeros(1, 1, 16, 16)
    half[..., :8] = 1.0
    assert float(preservation_loss(watermarked, original, half)) == pytest.approx(0.005, rel=1e-5)
    with pytest.raises(InputError):
        preservation_loss(watermarked, original, torch.ones(1, 1, 8, 8))


def test_objective_sums_the_weighted_terms_and_needs_a_map_for_l_pre():
    original = _smooth(16)
    watermarked = (original + 0.02 * torch.randn_like(original, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    logits, key, a_loc = torch.randn(1, 8), torch.ones(8), torch.rand(1, 1, 16, 16)
    weights = LossWeights(img=2.1, msg=7.5, tv=3.0, pre=975.0)
    terms = decoder_objective(watermarked, original, logits, key, a_loc, weights, temperature=1.0)
    expected = 2.1 * terms.img + 7.5 * terms.msg + 3.0 * terms.tv + 975.0 * terms.pre
    assert torch.allclose(terms.total, expected)
    assert all(value > 0 for value in terms.values().values())
    no_map = decoder_objective(
        watermarked, original, logits, key, None, LossWeights(2.1, 7.5, 0.0, 0.0), temperature=1.0
    )
    assert float(no_map.pre) == 0.0 and float(no_map.tv) == 0.0
    with pytest.raises(InputError):
        decoder_objective(watermarked, original, logits, key, None, weights, temperature=1.0)
