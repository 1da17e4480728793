import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from medsign_forensics.errors import InputError, ModelError, RegistryError
from medsign_forensics.fileio import sha256_file
from medsign_forensics.watermark.deployment import (
    DECODER_FILE,
    MANIFEST_FILE,
    DeploymentKey,
    key_from_hex,
    key_from_registry,
    load_deployment,
    save_deployment,
)


@dataclass
class FakeModel:
    """The three things a deployment needs from a DiffusionModel."""

    vae: torch.nn.Module
    weights_sha256: str = "12" * 32
    name: str = "tiny"


def _vae(seed: int = 0, channels: tuple[int, ...] = (8, 8)) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=channels, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        layers_per_block=1,
    ).eval()


def _save(folder: Path, vae: torch.nn.Module, key: DeploymentKey | None = None) -> Path:
    return save_deployment(
        folder, vae=vae, key=key or key_from_hex("0123456789ab"),
        base_model={"name": "tiny", "path": "embedded", "weights_sha256": "12" * 32},
        extractor={"path": "/x/extractor", "sha256": "34" * 32}, config={"dataset": "cxr", "ablation": "none"},
        seed=0, device="cpu", wall_time_s=1.5, metrics={"steps": 1},
    )


def _rewrite(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace the decoder file AND its recorded hash: only the strict key check can catch the change."""
    save_file(state, str(folder / DECODER_FILE))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["decoder"]["sha256"] = sha256_file(folder / DECODER_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_round_trip_builds_the_watermarked_vae(tmp_path):
    base = _vae()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.decoder.conv_out.weight.add_(0.1)
        tuned.encoder.conv_in.weight.add_(0.1)  # not part of a deployment: must not travel
    folder = _save(tmp_path / "dep", tuned)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["registered"] is False and manifest["provenance"] is None and manifest["bits"] == 48
    assert manifest["created_at"].endswith("Z") and manifest["decoder"]["sha256"] == sha256_file(folder / DECODER_FILE)
    assert set(load_file(str(folder / DECODER_FILE))) == {
        k for k in base.state_dict() if k.startswith(("decoder.", "post_quant_conv."))
    }
    deployment = load_deployment(folder)
    assert deployment.key_hex == "0123456789ab" and deployment.key.size == 48 and not deployment.registered
    vae = deployment.watermarked_vae(FakeModel(base))
    assert torch.equal(vae.decoder.conv_out.weight, tuned.decoder.conv_out.weight)
    assert torch.equal(vae.encoder.conv_in.weight, base.encoder.conv_in.weight)
    assert not torch.equal(base.decoder.conv_out.weight, tuned.decoder.conv_out.weight)  # the base is untouched
    assert not any(p.requires_grad for p in vae.parameters())


def test_a_tampered_decoder_fails_its_hash_check(tmp_path):
    folder = _save(tmp_path / "dep", _vae())
    data = bytearray((folder / DECODER_FILE).read_bytes())
    data[-10] ^= 0xFF
    (folder / DECODER_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash check"):
        load_deployment(folder)
    (folder / DECODER_FILE).unlink()
    with pytest.raises(ModelError, match="missing"):
        load_deployment(folder)


def test_decoder_weights_load_strictly(tmp_path):
    base = _vae()
    folder = _save(tmp_path / "dep", base)
    state = load_file(str(folder / DECODER_FILE))
    missing = dict(state)
    missing.pop("decoder.conv_out.bias")
    _rewrite(folder, missing)
    with pytest.raises(ModelError, match="1 missing"):
        load_deployment(folder).watermarked_vae(FakeModel(base))
    extra = {**state, "decoder.extra_layer.weight": torch.zeros(3)}
    _rewrite(folder, extra)
    with pytest.raises(ModelError, match="1 unexpected"):
        load_deployment(folder).watermarked_vae(FakeModel(base))
    _rewrite(folder, {**state, "encoder.conv_in.weight": torch.zeros(3)})
    with pytest.raises(ModelError, match="outside the VAE decoder"):
        load_deployment(folder)
    wider = _save(tmp_path / "wider", _vae(channels=(8, 16)))
    with pytest.raises(ModelError, match="architecture"):
        load_deployment(wider).watermarked_vae(FakeModel(base))


def test_the_base_model_must_be_the_one_the_decoder_was_tuned_from(tmp_path):
    base = _vae()
    deployment = load_deployment(_save(tmp_path / "dep", base))
    with pytest.raises(ModelError, match="fine-tuned from base model"):
        deployment.watermarked_vae(FakeModel(base, weights_sha256="99" * 32))
    assert deployment.watermarked_vae(FakeModel(base, weights_sha256="99" * 32), check_base=False) is not None


def test_manifest_problems_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="deployment.json"):
        load_deployment(tmp_path)
    folder = _save(tmp_path / "dep", _vae())
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelError, match="format version"):
        load_deployment(folder)
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "key_hex": "xyz"}))
    with pytest.raises(ModelError, match="key"):
        load_deployment(folder)


def test_keys_from_hex_and_from_a_registry(tmp_path):
    assert key_from_hex(" AB12CD34 ").key_hex == "ab12cd34"
    with pytest.raises(InputError):
        key_from_hex("ab12cd3")  # 28 bits is not a supported length
    with pytest.raises(InputError):
        key_from_hex("not-hex")

    from medsign_forensics.provenance.keys import IssuerKey
    from medsign_forensics.provenance.policy import load_policy
    from medsign_forensics.provenance.records import ModelInfo
    from medsign_forensics.provenance.registry import Registry

    issuer = IssuerKey.generate("Test Issuer")
    with Registry.open(tmp_path / "registry", create=True) as registry:
        entry = registry.issue(issuer, model=ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32),
                               deployment="site-a", policy=load_policy("default"))
        revoked = registry.issue(issuer, model=ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32),
                                 deployment="site-b", policy=load_policy("default"))
        registry.revoke(revoked.provenance_id, issuer, reason="test")
    key = key_from_registry(tmp_path / "registry", entry.provenance_id)
    assert key.registered and key.key_hex == entry.key_hex and key.provenance.provenance_id == entry.provenance_id
    assert key.provenance.record == entry.signed_record.text and key.provenance.signature
    folder = _save(tmp_path / "dep", _vae(), key=key)
    deployment = load_deployment(folder)
    assert deployment.registered and deployment.provenance_id == entry.provenance_id
    assert deployment.manifest["provenance"]["record"] == entry.signed_record.text
    with pytest.raises(RegistryError, match="revoked"):
        key_from_registry(tmp_path / "registry", revoked.provenance_id)
