"""The latent layer's key layout, keystream and distribution-preserving sampling (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from medsign_forensics.errors import InputError
from medsign_forensics.watermark.latent import LatentConfig, LatentMark, keystream, layout, new_secret

SHAPE = (4, 32, 32)
KEY = np.random.default_rng(3).integers(0, 2, 48).astype(np.uint8)


def test_layout_spreads_every_bit_over_the_latent():
    index = layout(SHAPE, 48, LatentConfig())
    counts = np.bincount(index.ravel(), minlength=48)
    assert counts.min() >= 80 and counts.sum() == 4 * 32 * 32
    # periodic tiling: an 8 x 8 latent block repeats, so a centre crop keeps part of every bit
    assert np.unique(index[:, 8:24, 8:24]).size == 48
    with pytest.raises(InputError, match="fewer than the 48 key bits"):
        layout((4, 8, 8), 48, LatentConfig())
    with pytest.raises(InputError, match="cannot be tiled"):
        layout((4, 30, 30), 48, LatentConfig())


def test_keystream_depends_on_the_secret_and_is_balanced():
    a, b = keystream(bytes(32), 4096), keystream(bytes(31) + b"\x01", 4096)
    assert a.shape == (4096,) and set(np.unique(a)) <= {0, 1}
    assert abs(a.mean() - 0.5) < 0.04 and (a != b).mean() > 0.4
    assert np.array_equal(a, keystream(bytes(32), 4096))
    with pytest.raises(InputError, match="32 bytes"):
        keystream(b"short", 8)


def test_watermarked_noise_is_standard_normal_for_a_fixed_key():
    rng = np.random.default_rng(11)
    # one image: its 4,096 values are a standard normal sample
    one = LatentMark(key=KEY, secret=rng.bytes(32)).initial_noise(SHAPE, torch.Generator().manual_seed(0))
    assert stats.kstest(one.numpy().ravel(), "norm").pvalue > 1e-3
    # the fixed key under fresh secrets (what anyone without the secret sees): pooled, exactly N(0, 1)
    pooled = np.concatenate([LatentMark(key=KEY, secret=rng.bytes(32)).initial_noise(
        SHAPE, torch.Generator().manual_seed(s)).numpy().ravel() for s in range(8)])
    assert stats.kstest(pooled, "norm").pvalue > 1e-3
    assert abs(pooled.mean()) < 0.02 and abs(pooled.std() - 1) < 0.02
    # while one secret fixes each element's sign: the same deployment's images share their sign pattern
    mark = LatentMark(key=KEY, secret=rng.bytes(32))
    a, b = (mark.initial_noise(SHAPE, torch.Generator().manual_seed(s)).numpy() for s in (1, 2))
    assert np.array_equal(a > 0, b > 0) and not np.allclose(a, b)


def test_the_right_secret_reads_the_key_and_a_wrong_one_reads_chance():
    secret = new_secret()
    z = LatentMark(key=KEY, secret=secret).initial_noise(SHAPE, torch.Generator().manual_seed(0))
    noisy = z + 1.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))  # inversion error
    assert np.array_equal(LatentMark(key=KEY, secret=secret).read(noisy).bits, KEY)
    wrong = [np.mean(LatentMark(key=KEY, secret=new_secret()).read(noisy).bits == KEY) for _ in range(40)]
    assert 0.35 < np.mean(wrong) < 0.65 and max(wrong) < 0.85


def test_masked_positions_do_not_vote_and_too_small_a_mask_is_refused():
    secret = new_secret()
    mark = LatentMark(key=KEY, secret=secret)
    z = mark.initial_noise(SHAPE, torch.Generator().manual_seed(0))
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 8:24] = True  # a centre crop of a quarter of the latent
    garbage = z.clone()
    garbage[..., ~torch.from_numpy(mask)] = 100.0  # what lies outside the crop must not count
    assert np.array_equal(mark.read(garbage, mask).bits, KEY)
    tiny = np.zeros((32, 32), dtype=bool)
    tiny[:2, :2] = True
    with pytest.raises(InputError, match="too little"):
        mark.read(z, tiny)


def test_config_round_trip_and_the_secret_stays_out_of_repr():
    config = LatentConfig(channel_factor=2, spatial_factor=2, inversion_steps=5)
    assert LatentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="unknown"):
        LatentConfig.from_dict({"steps": 3})
    with pytest.raises(InputError, match="positive integer"):
        LatentConfig(spatial_factor=0)
    secret = bytes(range(32))
    assert secret.hex() not in repr(LatentMark(key=KEY, secret=secret))


def test_a_free_block_mean_leaves_the_low_frequencies_to_chance():
    """block 2: the key fixes no 2 x 2 block mean, so images of one key share no brightness pattern, while each
    z_T is still exactly N(0, 1) and the key reads back."""
    rng = np.random.default_rng(5)
    secret = rng.bytes(32)
    index = layout(SHAPE, 48, LatentConfig(block=2))
    assert (index == -1).mean() == 0.25 and np.bincount(index[index >= 0], minlength=48).min() >= 60
    marks = {block: LatentMark(key=KEY, secret=secret, config=LatentConfig(block=block)) for block in (1, 2)}
    draws = {
        block: np.stack([mark.initial_noise(SHAPE, torch.Generator().manual_seed(s))[0].numpy() for s in range(64)])
        for block, mark in marks.items()
    }
    block_means = {b: d.reshape(64, 4, 16, 2, 16, 2).mean(axis=(3, 5)) for b, d in draws.items()}
    # the mean over images of each block's mean: about +-0.4 when every element's sign is fixed, 0 when free
    assert np.abs(block_means[1].mean(axis=0)).mean() > 0.25
    assert np.abs(block_means[2].mean(axis=0)).mean() < 0.1
    assert abs(block_means[2].std() - 0.5) < 0.03  # a plain block mean of 4 N(0, 1) values has sd 0.5
    assert stats.kstest(draws[2].ravel(), "norm").pvalue > 1e-3
    noisy = torch.from_numpy(draws[2][0]) + 1.0 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(marks[2].read(noisy).bits, KEY)
    # a mask that cuts a block keeps that whole block out of the vote
    mask = np.ones((32, 32), dtype=bool)
    mask[:, 15] = False
    garbage = torch.from_numpy(draws[2][0]).clone()
    garbage[..., 14:16] = 100.0
    assert np.array_equal(marks[2].read(garbage, mask).bits, KEY)
    with pytest.raises(InputError, match="power of two"):
        LatentConfig(block=3)
