import pytest
import torch

from medsign_forensics.errors import InputError
from medsign_forensics.imageio import BT601_LUMA
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenEncoder, HiddenExtractor, rgb_to_grey


@pytest.mark.parametrize("bits", [32, 48, 64])
def test_extractor_reads_any_size(bits):
    extractor = HiddenExtractor(HiddenConfig(bits=bits)).eval()
    for height, width in [(64, 64), (97, 131), (256, 256)]:
        with torch.no_grad():
            logits = extractor(torch.rand(2, 1, height, width))
        assert logits.shape == (2, bits)


def test_encoder_adds_a_bounded_key_dependent_residual():
    torch.manual_seed(0)
    config = HiddenConfig(bits=32, strength=0.1)
    encoder = HiddenEncoder(config).eval()
    images = torch.rand(2, 1, 48, 40)
    keys = torch.randint(0, 2, (2, 32)).float()
    with torch.no_grad():
        marked = encoder(images, keys)
        other = encoder(images, 1 - keys)
    assert marked.shape == images.shape
    assert marked.min() >= 0 and marked.max() <= 1
    assert (marked - images).abs().max() <= 0.1 + 1e-6  # |strength * tanh| <= strength
    assert not torch.allclose(marked, other)


def test_rgb_to_grey_uses_bt601_luma():
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 0] = 1.0  # pure red
    assert torch.allclose(rgb_to_grey(rgb), torch.full((1, 1, 2, 2), BT601_LUMA[0]))
    grey = torch.rand(1, 1, 4, 4)
    assert rgb_to_grey(grey) is grey


def test_rgb_input_to_extractor_is_refused():
    with pytest.raises(InputError, match="rgb_to_grey"):
        HiddenExtractor(HiddenConfig())(torch.rand(1, 3, 32, 32))


def test_config_validation_and_round_trip():
    with pytest.raises(InputError):
        HiddenConfig(bits=40)
    with pytest.raises(InputError):
        HiddenConfig(encoder_tile=2)  # too small a pattern period
    config = HiddenConfig(bits=64, strength=0.2)
    assert HiddenConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError):
        HiddenConfig.from_dict({**config.to_dict(), "mystery": 1})


def test_whitening_layer_changes_forward_but_not_raw_logits():
    extractor = HiddenExtractor(HiddenConfig(bits=32)).eval()
    images = torch.rand(3, 1, 40, 40)
    with torch.no_grad():
        raw = extractor.raw_logits(images)
        extractor.attach_whitening(2 * torch.eye(32), torch.ones(32))
        assert torch.allclose(extractor.raw_logits(images), raw)
        assert torch.allclose(extractor(images), 2 * raw + 1, atol=1e-5)
