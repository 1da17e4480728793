"""The spectral extractor: layout, informed mark, blind synchronisation, reading under attacks, folder format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.spectral import phantom_radiograph

from medsign_forensics.attacks.library import get_attack
from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.watermark.extractor_io import extract_bits, load_extractor, save_spectral_extractor
from medsign_forensics.watermark.spectral import (
    SpectralConfig,
    SpectralExtractor,
    embed,
    embed_image,
    informed_residual,
    layout,
    on_frequencies,
)

CONFIG = SpectralConfig()
STORE = Requantize(8)


@pytest.fixture(scope="module")
def extractor() -> SpectralExtractor:
    return SpectralExtractor(CONFIG)


def _key(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, CONFIG.bits).astype(np.uint8)


def _accuracy(extractor: SpectralExtractor, image: np.ndarray, key: np.ndarray) -> float:
    return float(np.mean(extractor.read(torch.from_numpy(image)[None]).bits[0] == key))


def test_layout_pairs_are_mirrors_at_equal_radius_and_balanced() -> None:
    lay = layout(CONFIG)
    assert lay.a.shape == (CONFIG.bits, CONFIG.pairs_per_bit, 2)
    assert np.array_equal(lay.a[..., 0], lay.b[..., 0]) and np.array_equal(lay.a[..., 1], -lay.b[..., 1])
    assert np.all((lay.a[..., 1] > 0).sum(axis=1) == CONFIG.pairs_per_bit // 2)  # half of A on each side
    members = {tuple(f) for f in np.concatenate([lay.a, lay.b]).reshape(-1, 2)}
    assert len(members) == 2 * CONFIG.bits * CONFIG.pairs_per_bit  # no bin serves two bits
    radius = np.hypot(*np.moveaxis(lay.a, -1, 0)) / CONFIG.tile
    assert radius.min() >= CONFIG.r_min and radius.max() < CONFIG.r_max


def test_half_of_the_bins_carry_energy_whatever_the_key() -> None:
    frequencies, shares = on_frequencies(CONFIG, _key(0))
    assert len(frequencies) == CONFIG.bits * CONFIG.pairs_per_bit + len(CONFIG.pilots)
    assert shares.sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="48-bit"):
        on_frequencies(CONFIG, np.zeros(32, dtype=np.uint8))


def test_informed_residual_is_in_phase_with_the_image() -> None:
    image = torch.from_numpy(phantom_radiograph(1))[None]
    residual = informed_residual(image, _key(1), CONFIG)
    assert residual.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)
    frequencies, _ = on_frequencies(CONFIG, _key(1))
    rows, cols = frequencies[:, 0] * 4 % 256, frequencies[:, 1] * 4 % 256
    window = torch.hann_window(256, periodic=False, dtype=torch.float64)
    w2 = window[:, None] * window[None, :]
    spectrum = lambda x: torch.fft.fft2((x - (x * w2).sum() / w2.sum()) * w2)[rows, cols]  # noqa: E731
    phase_image = torch.angle(spectrum(image[0].double()))
    phase_mark = torch.angle(spectrum(residual[0].double()))
    difference = torch.remainder(phase_mark - phase_image + np.pi, 2 * np.pi) - np.pi
    assert difference.abs().max().item() < 0.05
    with pytest.raises(InputError, match="multiples of 64"):
        informed_residual(torch.zeros(1, 100, 128), _key(1), CONFIG)


def test_embed_meets_the_psnr_budget() -> None:
    image = torch.from_numpy(phantom_radiograph(2))[None]
    marked = embed(image, _key(2), CONFIG, psnr=40.0)
    mse = (marked - image).pow(2).mean().item()
    assert 10 * np.log10(1 / mse) == pytest.approx(40.0, abs=0.3)  # clipping only removes energy


@pytest.mark.parametrize("attack", ["none", "brightness_x2", "crop_center_area0.5", "jpeg_q50", "rotate_25",
                                    "resize_edge0.7"])
def test_marked_image_is_read_blind_after_each_table1_attack(extractor: SpectralExtractor, attack: str) -> None:
    accuracies = []
    for seed in range(3):
        key = _key(10 + seed)
        marked = STORE.exact(embed_image(phantom_radiograph(seed), key, CONFIG, psnr=40.5))
        attacked = STORE.exact(get_attack(attack).exact(marked, np.random.default_rng(seed)))
        accuracies.append(_accuracy(extractor, attacked, key))
    assert np.mean(accuracies) >= 0.9


@pytest.mark.parametrize(("attack", "rotation", "scale"), [("rotate_-30", 30.0, 1.0), ("rotate_12", -12.0, 1.0),
                                                             ("resize_edge0.75", 0.0, 0.75),
                                                             ("resize_edge1.4", 0.0, 1.4)])
def test_sync_recovers_a_known_rotation_and_scale(extractor: SpectralExtractor, attack: str, rotation: float,
                                                   scale: float) -> None:
    marked = STORE.exact(embed_image(phantom_radiograph(5), _key(5), CONFIG, psnr=40.5))
    reading = extractor.read(torch.from_numpy(STORE.exact(get_attack(attack).exact(marked)))[None])
    assert float(reading.rotation[0]) == pytest.approx(rotation, abs=0.7)  # Pillow rotates counter-clockwise
    assert float(reading.scale[0]) == pytest.approx(scale, rel=0.02)
    assert float(reading.presence[0]) >= CONFIG.presence_threshold


def test_unmarked_image_has_no_pilot(extractor: SpectralExtractor) -> None:
    scores = [float(extractor.read(torch.from_numpy(phantom_radiograph(s))[None]).presence[0]) for s in range(4)]
    assert max(scores) < CONFIG.presence_threshold


def test_logits_are_differentiable_through_the_pixels(extractor: SpectralExtractor) -> None:
    image = torch.from_numpy(phantom_radiograph(6))[None, None].requires_grad_(True)
    extractor(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_folder_round_trip_and_tamper_check(tmp_path: Path) -> None:
    save_spectral_extractor(CONFIG, tmp_path / "ex")
    loaded = load_extractor(tmp_path / "ex")
    assert isinstance(loaded, SpectralExtractor) and loaded.config == CONFIG and loaded.calibration is None
    images = [phantom_radiograph(7), phantom_radiograph(8, 128)[:, :96]]  # different sizes, read one by one
    bits, logits = extract_bits(loaded, images)
    assert bits.shape == (2, CONFIG.bits) and np.array_equal(bits, (logits > 0).astype(np.uint8))
    manifest_path = tmp_path / "ex" / "extractor.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["presence_threshold"] = 0.0  # an attacker lowering the gate
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="SHA-256"):
        load_extractor(tmp_path / "ex")


def test_shipped_extractor_loads_with_its_calibration() -> None:
    from medsign_forensics.reading import load_default_extractor

    shipped = load_default_extractor()
    assert isinstance(shipped, SpectralExtractor)
    assert shipped.calibration is not None and shipped.calibration.bits == CONFIG.bits
    assert {entry["name"] for entry in shipped.calibration.sets} >= {"real", "phantoms", "generated"}
