"""Content binding of the spectral mark: a genuine image is bound, the same mark copied onto another image is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.spectral import STORE, copy_lattice, phantom_radiograph

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.errors import InputError
from medsign_forensics.watermark.binding import Binding, bound_phases, coherence, coherence_threshold
from medsign_forensics.watermark.head import HeadConfig, WatermarkHead
from medsign_forensics.watermark.spectral import SpectralConfig, SpectralExtractor

CONFIG = SpectralConfig()
KEY = np.random.default_rng(5).integers(0, 2, CONFIG.bits).astype(np.uint8)
BINDING = Binding(np.random.default_rng(6).bytes(32))


def mark(images: list[np.ndarray], binding: Binding | None = BINDING) -> list[np.ndarray]:
    head = WatermarkHead(spectral=CONFIG, key=KEY, config=HeadConfig(), binding=binding).eval()
    with torch.no_grad():
        out = head(torch.from_numpy(np.stack(images))[:, None])[:, 0].numpy()
    return [STORE.exact(x) for x in out]


def read(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    reading = SpectralExtractor(CONFIG).read(torch.from_numpy(image)[None])
    return reading.bits[0], float(reading.rotation[0]), float(reading.scale[0])


def bound(image: np.ndarray, binding: Binding = BINDING) -> float:
    _, rotation, scale = read(image)
    return coherence(image, KEY, CONFIG, binding, rotation=rotation, scale=scale)[0]


@pytest.fixture(scope="module")
def hosts() -> list[np.ndarray]:
    return [phantom_radiograph(seed) for seed in range(4)]


@pytest.fixture(scope="module")
def genuine(hosts) -> list[np.ndarray]:
    return mark(hosts)


def test_the_secret_expands_deterministically_and_partners_avoid_the_lattice() -> None:
    frequencies = np.array([[3, 5], [10, -7], [-2, 12]])
    again = Binding(BINDING.secret)
    assert np.array_equal(BINDING.theta(frequencies), again.theta(frequencies))
    assert not np.array_equal(BINDING.theta(frequencies), Binding(bytes(32)).theta(frequencies))
    g1, g2 = BINDING.partners(frequencies, CONFIG.tile)
    assert np.allclose(g1 + g2, frequencies / CONFIG.tile)
    offsets = np.rint((g1 - frequencies / CONFIG.tile / 2) * 256).astype(int)
    assert np.all(offsets % 2 == 1) and np.abs(offsets).max() <= 15  # odd: never a multiple of 4/256
    assert "secret" not in repr(BINDING) or BINDING.secret.hex() not in repr(BINDING)
    with pytest.raises(InputError):
        Binding(b"short")


def test_threshold_is_the_chernoff_bound_and_tightens_with_more_frequencies() -> None:
    t = coherence_threshold(198, 1e-6)
    assert 0.239 < t < 0.28  # above the normal approximation (0.239): the bound is conservative
    assert coherence_threshold(400, 1e-6) < t < coherence_threshold(198, 1e-9)
    # the bound holds on simulated nulls: mean of 198 cos(2U) terms
    draws = np.cos(2 * np.random.default_rng(0).uniform(0, np.pi, (20000, 198))).mean(axis=1)
    assert (draws >= coherence_threshold(198, 1e-3)).mean() <= 1e-3
    assert coherence_threshold(2, 1e-6) == 1.0  # too few frequencies: nothing can pass


def test_a_genuine_bound_image_passes_and_keeps_its_bits(genuine) -> None:
    threshold = coherence_threshold(198, 1e-6)
    for image in genuine:
        bits, _, _ = read(image)
        assert np.mean(bits == KEY) >= 0.95
        assert bound(image) >= threshold
    rotated = STORE.exact(get_attack("rotate_25").exact(genuine[0]))
    assert bound(rotated) >= threshold  # the invariant follows the geometry the pilots found


def test_the_copied_mark_reads_the_key_but_is_not_bound(hosts, genuine) -> None:
    threshold = coherence_threshold(198, 1e-6)
    forgeries = [copy_lattice(target, donor, CONFIG) for donor, target in zip(genuine, hosts[1:] + hosts[:1])]
    carrying = [forged for forged in forgeries if np.mean(read(forged)[0] == KEY) >= 0.85]
    assert len(carrying) >= 3  # the copies carry the key (one of these four loses the pilots): bits alone attribute
    assert all(bound(forged) < threshold for forged in carrying)
    assert bound(genuine[0], Binding(bytes(32))) < threshold  # another deployment's secret: not bound


def test_refined_phases_differ_from_the_first_guess(hosts) -> None:
    """The mark moves its own partners; the embedder reads them again on its output (REFINEMENTS)."""
    first = bound_phases(hosts[0], KEY, CONFIG, BINDING)
    [unbound] = mark([hosts[0]], binding=None)
    moved = bound_phases(hosts[0], KEY, CONFIG, BINDING, partners_from=unbound)
    assert first.shape == (len(first),) and not np.allclose(np.cos(2 * first), np.cos(2 * moved))
