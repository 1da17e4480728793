import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medsign_forensics.errors import ModelError
from medsign_forensics.watermark.extractor_io import (
    extract_bits,
    extractor_manifest,
    load_encoder,
    load_extractor,
    save_encoder,
    save_extractor,
)
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenEncoder, HiddenExtractor


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    extractor = HiddenExtractor(HiddenConfig(bits=32)).eval()
    save_extractor(extractor, tmp_path, steps=3)
    return extractor, tmp_path


def test_round_trip_gives_identical_outputs(saved):
    extractor, folder = saved
    loaded = load_extractor(folder)
    images = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(images), extractor(images))
    manifest = extractor_manifest(folder / "extractor.safetensors")
    assert manifest["steps"] == 3 and manifest["whitening"] is None and len(manifest["sha256"]) == 64


def test_whitening_is_saved_and_restored(tmp_path):
    extractor = HiddenExtractor(HiddenConfig(bits=32)).eval()
    extractor.attach_whitening(torch.eye(32) * 3, torch.full((32,), -1.0))
    save_extractor(extractor, tmp_path, whitening={"n_samples": 100})
    loaded = load_extractor(tmp_path)
    assert loaded.whitened
    images = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), extractor(images))


def test_tampered_weights_fail_the_hash_check(saved):
    _, folder = saved
    path = folder / "extractor.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_extractor(folder)


def test_missing_keys_fail_strict_loading(saved):
    extractor, folder = saved
    state = {k: v for k, v in extractor.state_dict().items() if not k.startswith("head.")}
    path = folder / "extractor.safetensors"
    save_file(state, str(path))
    manifest = json.loads((folder / "extractor.json").read_text())
    import hashlib

    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # hash right, keys wrong
    (folder / "extractor.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="missing"):
        load_extractor(folder)


def test_missing_manifest(tmp_path):
    with pytest.raises(ModelError, match="manifest"):
        load_extractor(tmp_path)


def test_encoder_round_trip(tmp_path):
    encoder = HiddenEncoder(HiddenConfig(bits=32)).eval()
    save_encoder(encoder, tmp_path)
    loaded = load_encoder(tmp_path)
    images, keys = torch.rand(1, 1, 32, 32), torch.ones(1, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images, keys), encoder(images, keys))


def test_extract_bits_keeps_order_across_mixed_sizes(saved):
    extractor, _ = saved
    rng = np.random.default_rng(0)
    images = [rng.random((h, w), dtype=np.float32) for h, w in [(40, 40), (50, 30), (40, 40), (64, 64)]]
    bits, logits = extract_bits(extractor, images, batch_size=1)
    assert bits.shape == (4, 32) and bits.dtype == np.uint8
    for index, image in enumerate(images):
        with torch.no_grad():
            expected = extractor(torch.from_numpy(image)[None, None]).numpy()[0]
        assert np.allclose(logits[index], expected, atol=1e-4)
        assert np.array_equal(bits[index], (expected > 0).astype(np.uint8))
