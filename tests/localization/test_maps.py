from __future__ import annotations

import numpy as np
import pytest
import torch

from medsign_forensics.localization.capture import CapturedAttention, LayerAttention
from medsign_forensics.localization.maps import (
    ClusterCount,
    MapOptions,
    adaptive_scaling,
    combine,
    count_clusters,
    localize_captured,
    select_token,
    token_maps,
    word_map,
)
from medsign_forensics.reports.findings import FindingKind
from medsign_forensics.reports.words import MedicalWord, WordRole, WordTokens

SIGMOID = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731


def blobs(centres, shape=(48, 80), sigma=4.0, noise=0.02, seed=0):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = sum(np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2)) for r, c in centres)
    return (image + noise * np.random.default_rng(seed).random(shape)).astype(np.float32)


ONE = blobs([(24, 40)])
THREE = blobs([(10, 10), (38, 40), (12, 70)])


def _tokens(n: int) -> WordTokens:
    word = MedicalWord("effusion", 0, 8, WordRole.FINDING, frozenset({FindingKind.EFFUSION}))
    return WordTokens(word, tuple(range(1, n + 1)))


def test_cluster_count_sees_one_and_three_blobs():
    assert count_clusters(ONE).clusters == 1
    assert count_clusters(THREE).clusters == 3


def test_constant_map_has_no_cluster():
    assert count_clusters(np.full((32, 32), 0.3, dtype=np.float32)) == ClusterCount(0, 1.0)


@pytest.mark.parametrize("order", [(THREE, ONE), (ONE, THREE)])
def test_cas_picks_the_compact_token(order):
    result = word_map(_tokens(2), np.stack(order))
    assert order[result.chosen] is ONE
    assert np.array_equal(result.a_star, ONE)
    expected = [3, 1] if order[0] is THREE else [1, 3]
    assert [c.clusters for c in result.cluster_counts] == expected


def test_select_token_ranks_no_cluster_last_and_breaks_ties_by_noise():
    assert select_token([ClusterCount(0, 1.0), ClusterCount(4, 0.1)]) == 1
    assert select_token([ClusterCount(2, 0.3), ClusterCount(2, 0.1), ClusterCount(2, 0.1)]) == 1
    assert select_token([ClusterCount(0, 1.0), ClusterCount(0, 1.0)]) == 0


def test_without_cas_the_word_map_is_the_token_average():
    result = word_map(_tokens(2), np.stack([ONE, THREE]), MapOptions(cas=False))
    assert result.chosen is None and result.cluster_counts == ()
    assert np.allclose(result.a_star, (ONE + THREE) / 2)


def test_aas_range_and_threshold():
    a_loc = adaptive_scaling(THREE)
    assert a_loc.dtype == np.float32 and a_loc.shape == THREE.shape
    assert a_loc.min() >= SIGMOID(-1) - 1e-6 and a_loc.max() <= SIGMOID(1) + 1e-6
    # tau is the 0.7 quantile of the scaled map, so about 30% of the pixels end above 0.5
    assert abs(np.mean(a_loc > 0.5) - 0.3) < 0.01
    # monotone: brighter attention never gets a smaller value
    order = np.argsort(THREE, axis=None)
    assert np.all(np.diff(a_loc.ravel()[order]) >= -1e-6)
    assert abs(np.mean(adaptive_scaling(THREE, tau_quantile=0.9) > 0.5) - 0.1) < 0.01


def test_without_aas_the_map_is_min_max_scaled():
    result = word_map(_tokens(1), ONE[None], MapOptions(aas=False))
    assert result.a_loc.min() == 0.0 and result.a_loc.max() == pytest.approx(1.0)
    assert np.allclose(result.a_loc, (ONE - ONE.min()) / (ONE.max() - ONE.min()), atol=1e-6)


def test_combine_takes_the_pixelwise_maximum_and_normal_is_zero():
    first, second = word_map(_tokens(1), ONE[None]), word_map(_tokens(1), THREE[None])
    assert np.array_equal(combine([first, second], ONE.shape), np.maximum(first.a_loc, second.a_loc))
    normal = combine([], (12, 20))
    assert normal.shape == (12, 20) and normal.dtype == np.float32 and not normal.any()


def test_localize_without_words_is_a_normal_zero_map():
    result = localize_captured(None, [], (12, 20))
    assert result.normal and result.a_loc.shape == (12, 20) and not result.a_loc.any()


def _captured() -> CapturedAttention:
    fine = torch.zeros(1, 5, 4, 6)
    fine[0, 2, 1, 2] = 8.0  # 2 heads x 2 steps -> mean probability 2 at one cell
    coarse = torch.ones(1, 5, 2, 3) * 4.0  # mean probability 1 everywhere
    layers = {
        "a.attn2": LayerAttention(name="a.attn2", heads=2, sums=fine),
        "b.attn2": LayerAttention(name="b.attn2", heads=2, sums=coarse),
    }
    return CapturedAttention(layers=layers, latent_size=(4, 6), steps=2, batch=1)


def test_token_maps_average_layers_heads_and_steps_at_image_size():
    maps = token_maps(_captured(), [2, 3], (8, 12))
    assert maps.shape == (2, 8, 12)
    # token 3: only the coarse layer's constant 1, averaged with the fine layer's 0
    assert torch.allclose(maps[1], torch.full((8, 12), 0.5))
    # token 2: the fine layer's bump upsampled bilinearly (total mass x4 at twice the size) plus 0.5
    assert torch.isclose((maps[0] - 0.5).sum() * 2, torch.tensor(2.0 * 4), atol=1e-4)
    assert maps[0].argmax().item() in {r * 12 + c for r in (2, 3) for c in (4, 5)}


def test_localize_captured_combines_words():
    captured = _captured()
    words = [_tokens(1), WordTokens(_tokens(1).word, (2,))]
    result = localize_captured(captured, words, (8, 12))
    assert len(result.words) == 2 and not result.normal
    assert np.array_equal(result.a_loc, np.maximum(result.words[0].a_loc, result.words[1].a_loc))
