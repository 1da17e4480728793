"""The watermark layer: budget, gain bounds, attachment to a VAE decoder, and its place in a deployment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.watermark.head import HeadConfig, WatermarkHead, attach
from medsign_forensics.watermark.spectral import SpectralConfig

KEY = np.random.default_rng(0).integers(0, 2, 48).astype(np.uint8)


def _images(batch: int = 2, size: int = 128) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = 0.45 + 0.2 * torch.sin(6 * xx) * torch.cos(4 * yy)
    return (base + 0.02 * torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(0))).clamp(0, 1)


def test_layer_spends_exactly_its_budget() -> None:
    head = WatermarkHead(spectral=SpectralConfig(), key=KEY, config=HeadConfig(psnr=40.0))
    images = _images()
    marked = head(images)
    psnr = 10 * torch.log10(1 / (marked - images).pow(2).mean(dim=(1, 2, 3)))
    assert torch.allclose(psnr, torch.full_like(psnr, 40.0), atol=0.2)


def test_gain_starts_at_one_and_stays_bounded() -> None:
    head = WatermarkHead(spectral=SpectralConfig(), key=KEY, config=HeadConfig(max_log_gain=1.0))
    assert torch.allclose(head.gain(_images()), torch.ones(2, 128, 128))
    with torch.no_grad():
        head.net[-1].bias.fill_(50.0)
    assert head.gain(_images()).max().item() == pytest.approx(np.e, rel=1e-4)


def test_bad_inputs_are_refused() -> None:
    head = WatermarkHead(spectral=SpectralConfig(), key=KEY)
    with pytest.raises(InputError, match="greyscale"):
        head(torch.zeros(1, 3, 128, 128))
    with pytest.raises(InputError, match="30..60 dB"):
        HeadConfig(psnr=20.0)


def test_attached_layer_marks_what_the_decoder_decodes() -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
    ).eval()
    latents = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = vae.decode(latents).sample
        attach(vae, WatermarkHead(spectral=SpectralConfig(), key=KEY, config=HeadConfig(psnr=40.0)))
        marked = vae.decode(latents).sample
    difference = ((marked - plain) / 2).pow(2).mean().item()  # [-1, 1] -> [0, 1] units
    assert 10 * np.log10(1 / difference) == pytest.approx(40.0, abs=1.5)  # clipping at 0/1 removes a little
    with pytest.raises(InputError, match="already"):
        attach(vae, WatermarkHead(spectral=SpectralConfig(), key=KEY))


def test_deployment_with_a_layer_round_trips_and_detects_tampering(tmp_path) -> None:
    from medsign_forensics.key import bits_to_hex
    from medsign_forensics.watermark.deployment import HEAD_FILE, key_from_hex, load_deployment, save_deployment

    head = WatermarkHead(spectral=SpectralConfig(), key=KEY)
    with torch.no_grad():
        head.log_amplitudes.add_(0.1)

    folder = save_deployment(tmp_path / "d", head=head, key=key_from_hex(bits_to_hex(KEY)),
                             base_model={"name": "m", "path": "embedded", "weights_sha256": "0" * 64},
                             extractor={"path": "embedded", "sha256": "1" * 64}, config={}, seed=0, device="cpu",
                             wall_time_s=0.0, metrics={})
    loaded = load_deployment(folder)
    assert loaded.kind == "spectral-head" and loaded.held_out is None
    assert torch.allclose(loaded.head().log_amplitudes, head.log_amplitudes)
    with pytest.raises(InputError, match="exactly one"):
        save_deployment(tmp_path / "e", key=key_from_hex(bits_to_hex(KEY)),
                        base_model={"name": "m", "path": "embedded", "weights_sha256": "0" * 64}, extractor={},
                        config={}, seed=0, device="cpu", wall_time_s=0.0, metrics={})
    data = bytearray((folder / HEAD_FILE).read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    (folder / HEAD_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash check"):
        load_deployment(folder)
