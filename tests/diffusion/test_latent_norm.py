from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medsign_forensics.diffusion.configs import MiniCxrConfig, build_vae, tiny_config
from medsign_forensics.diffusion.latent_norm import channel_stats, fold_channel_norm
from medsign_forensics.errors import ModelError


def _vae_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    vae = build_vae(tiny_config()).eval()
    with torch.no_grad():  # an uneven latent, as a trained VAE's can be
        vae.quant_conv.weight.mul_(torch.linspace(0.2, 3.0, vae.quant_conv.weight.shape[0])[:, None, None, None])
        vae.quant_conv.bias.add_(torch.linspace(-1.0, 1.0, vae.quant_conv.bias.shape[0]))
    images = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return vae, images


@torch.no_grad()
def test_folding_standardises_each_channel_and_leaves_decoding_unchanged() -> None:
    vae, images = _vae_and_images()
    before = vae.encode(images).latent_dist
    decoded = vae.decode(before.mean).sample
    mean, std = channel_stats(before.mean)
    assert std.max() / std.min() > 2  # the test starts from an uneven latent
    fold_channel_norm(vae, mean, std)
    after = vae.encode(images).latent_dist
    stats = after.mean.transpose(0, 1).reshape(after.mean.shape[1], -1)
    torch.testing.assert_close(stats.mean(dim=1), torch.zeros(stats.shape[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(stats.std(dim=1), torch.ones(stats.shape[0]), atol=1e-4, rtol=0)
    # the posterior's spread is rescaled with its mean, and decoding undoes the standardisation exactly
    torch.testing.assert_close(after.std, before.std / std.float()[:, None, None], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vae.decode(after.mean).sample, decoded, rtol=1e-4, atol=1e-5)


def test_a_dead_channel_is_an_error() -> None:
    latents = torch.randn(4, 3, 2, 2)
    latents[:, 1] = 0.5
    with pytest.raises(ModelError, match="standard deviations"):
        channel_stats(latents)


def test_channel_norm_is_written_only_when_on() -> None:
    assert "channel_norm" not in tiny_config().to_dict()["vae_train"]
    config = replace(tiny_config(), vae_train=replace(tiny_config().vae_train, channel_norm=True))
    data = config.to_dict()
    assert data["vae_train"]["channel_norm"] is True
    assert MiniCxrConfig.from_dict(data) == config
