import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.tiny_world import REPORTS, build_extractor, build_model

from medsign_forensics.config import LossWeights
from medsign_forensics.errors import DatasetError, InputError
from medsign_forensics.localization import cache as cache_module
from medsign_forensics.localization.cache import LatentCache, MapVariant, select_items
from medsign_forensics.reports import Report
from medsign_forensics.watermark.deployment import key_from_hex, load_deployment
from medsign_forensics.watermark.train_decoder import (
    Ablation,
    DecoderTrainConfig,
    DecoderTrainer,
    batch_indices,
    lr_factor,
    train_decoder,
)

KEY = key_from_hex("a5c3e10f")  # 32 bits: the tiny extractor's length
FAST = dict(batch=2, sample_steps=2, sample_batch=3, log_every=1, checkpoint_every=1, train_size=64, attacks=("none",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    from medsign_forensics.diffusion import load_model

    model = load_model(build_model(root / "model", image_size=64))
    extractor = build_extractor(root / "extractor")
    reports = [Report(report_id=f"r{i}", findings="", impression=text) for i, text in enumerate(REPORTS[:4])]
    items = select_items(reports, None, seed=0)
    reference = copy.deepcopy(model.vae).float().eval()
    data = LatentCache(root / "cache").build(
        model, items, reference_vae=reference, steps=2, guidance_scale=4.0, batch=3
    )
    return {"root": root, "model": model, "extractor": extractor, "items": items, "data": data}


def _trainer(world, **changes):
    from medsign_forensics.watermark.extractor_io import load_extractor

    config = DecoderTrainConfig(**{**FAST, **changes})
    return DecoderTrainer(
        config, model=world["model"], extractor=load_extractor(world["extractor"]), key=KEY, data=world["data"]
    )


def _perturb(trainer, scale=0.05, seed=0):
    """Move D_w away from D_o so that the fidelity terms start above zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trainer.vae_w.decoder.conv_out.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def test_cache_holds_x0_original_images_and_three_maps(world):
    data = world["data"]
    assert data.latents.shape == (4, 4, 8, 8) and data.images.shape == (4, 1, 64, 64)
    assert data.images.dtype == torch.float16
    for variant in MapVariant:
        assert data.maps[variant].shape == (4, 64, 64) and data.maps[variant].dtype == np.uint8
    normal = [i for i, item in enumerate(data.items) if "No acute" in item.text]
    assert normal and not data.maps[MapVariant.MEDSIGN][normal[0]].any()  # a normal report has no map
    abnormal = [i for i, item in enumerate(data.items) if "effusion" in item.text][0]
    assert data.maps[MapVariant.MEDSIGN][abnormal].any()
    from medsign_forensics.diffusion.sampling import decode

    with torch.no_grad():  # I_o is exactly D_o(x0)
        again = decode(world["model"], data.latents[:1])
    assert torch.allclose(again, data.images[:1].float(), atol=2e-3)


def test_cache_is_reused_and_refuses_other_settings(world, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached item was sampled again")

    monkeypatch.setattr(cache_module, "_sample_batch", no_sampling)
    cache = LatentCache(world["root"] / "cache")
    reference = copy.deepcopy(world["model"].vae).float()
    again = cache.build(
        world["model"], world["items"][::-1], reference_vae=reference, steps=2, guidance_scale=4.0, batch=3
    )
    assert [i.report_id for i in again.items] == [i.report_id for i in world["items"][::-1]]
    assert torch.equal(again.latents[0], world["data"].latents[-1])
    with pytest.raises(DatasetError, match="other sampling settings"):
        cache.build(world["model"], world["items"], reference_vae=reference, steps=3, guidance_scale=4.0, batch=3)


def test_one_step_lowers_each_loss_term_on_a_fixed_batch(world):
    presets = {"img": LossWeights(1, 0, 0, 0), "msg": LossWeights(0, 1, 0, 0), "tv": LossWeights(0, 0, 1, 0),
               "pre": LossWeights(0, 0, 0, 1), "total": LossWeights(2.1, 7.5, 3.0, 975.0)}
    for term, weights in presets.items():
        trainer = _trainer(world, weights=weights, lr=1e-4, warmup_steps=0, steps=10)
        _perturb(trainer)
        with torch.no_grad():
            before = trainer.forward(0)[0].values()[term]
        assert before > 0, term
        # The term's gradient reaches the decoder (non-zero) ...
        trainer.optimizer.zero_grad()
        trainer.forward(0)[0].total.backward()
        norm = sum(float(p.grad.norm()) ** 2 for p in trainer.vae_w.parameters() if p.grad is not None) ** 0.5
        assert norm > 0, term
        # ... and one AdamW step along it lowers the term on the same batch.
        trainer.train_step()
        with torch.no_grad():
            after = trainer.forward(0)[0].values()[term]
        assert after < before, (term, before, after)


def test_only_the_decoder_side_trains_and_the_extractor_is_frozen(world):
    trainer = _trainer(world, steps=2)
    trainable = {name for name, p in trainer.vae_w.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("decoder.", "post_quant_conv.")) for name in trainable)
    assert not any(p.requires_grad for p in trainer.vae_o.parameters())
    assert not any(p.requires_grad for p in trainer.extractor.parameters()) and not trainer.extractor.training
    encoder_before = copy.deepcopy(trainer.vae_w.encoder.state_dict())
    trainer.train_step()
    assert all(torch.equal(v, trainer.vae_w.encoder.state_dict()[k]) for k, v in encoder_before.items())


def test_ablations_set_weights_and_maps():
    base = LossWeights(2.1, 7.5, 3.0, 975.0)
    assert Ablation.STABLE_SIGNATURE.apply(base) == LossWeights(2.1, 7.5, 0.0, 0.0)
    assert Ablation.STABLE_SIGNATURE.map_variant is None and Ablation.NO_PRE.map_variant is None
    assert Ablation.NO_TV.apply(base).tv == 0.0 and Ablation.NO_TV.map_variant is MapVariant.MEDSIGN
    assert Ablation.NO_CAS.map_variant is MapVariant.NO_CAS and not MapVariant.NO_CAS.options().cas
    assert Ablation.NO_AAS.map_variant is MapVariant.NO_AAS and not MapVariant.NO_AAS.options().aas
    config = DecoderTrainConfig(dataset="fundus", ablation="no-tv")
    assert config.loss_weights == LossWeights(1.9, 6.0, 0.0, 800.0)
    assert DecoderTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="unknown ablation"):
        DecoderTrainConfig(ablation="no-watson")
    with pytest.raises(InputError):
        DecoderTrainConfig(attacks=("sharpen",))


def test_schedule_and_batches():
    config = DecoderTrainConfig(warmup_steps=20, min_lr=1e-6, lr=5e-4)
    assert lr_factor(0, config, 100) == pytest.approx(1 / 20)
    assert lr_factor(19, config, 100) == pytest.approx(1.0)
    assert lr_factor(100, config, 100) == pytest.approx(1e-6 / 5e-4)
    assert lr_factor(0, config, 10) == pytest.approx(0.5)  # warm-up is at most a fifth of the run: 2 steps here
    first_epoch = np.concatenate([batch_indices(s, n_items=10, batch=5, seed=3) for s in range(2)])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert np.array_equal(batch_indices(2, n_items=10, batch=5, seed=3), batch_indices(2, n_items=10, batch=5, seed=3))


def test_train_decoder_writes_a_deployment_and_resumes_exactly(world, tmp_path):
    config = DecoderTrainConfig(**{**FAST, "steps": 3, "attacks": ("none", "jpeg_q50")})
    common = dict(model=world["model"], extractor=world["extractor"], key=KEY, items=world["items"],
                  cache_dir=world["root"] / "cache")
    full = train_decoder(config, out_dir=tmp_path / "full", **common)
    manifest = json.loads((tmp_path / "full" / "deployment.json").read_text())
    assert manifest["registered"] is False and manifest["provenance"] is None and manifest["key_hex"] == KEY.key_hex
    assert manifest["config"]["effective_weights"] == {"img": 2.1, "msg": 7.5, "tv": 3.0, "pre": 975.0}
    assert manifest["metrics"]["steps"] == 3 and manifest["wall_time_s"] > 0
    assert len((tmp_path / "full" / "train_log.jsonl").read_text().splitlines()) == 3
    deployment = load_deployment(tmp_path / "full")
    assert deployment.decoder_sha256 == full.decoder_sha256
    base = world["model"].vae.state_dict()
    changed = [k for k, v in deployment.state.items() if not torch.equal(v, base[k].float())]
    assert changed  # the decoder moved away from D_o

    class Stop(Exception):
        pass

    def stop_after_two(event):
        if event.task == "fine-tuning D_w" and event.done == 2:
            raise Stop

    with pytest.raises(Stop):
        train_decoder(config, out_dir=tmp_path / "resumed", progress=stop_after_two, **common)
    with pytest.raises(InputError, match="--resume"):
        train_decoder(config, out_dir=tmp_path / "resumed", **common)
    with pytest.raises(InputError, match="different settings"):
        train_decoder(replace(config, batch=1), out_dir=tmp_path / "resumed", resume=True, **common)
    train_decoder(config, out_dir=tmp_path / "resumed", resume=True, **common)
    resumed = load_deployment(tmp_path / "resumed")
    for name, tensor in deployment.state.items():
        assert torch.allclose(tensor, resumed.state[name], atol=1e-6), name
    lines = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_training_refuses_an_unwhitened_extractor_and_a_key_of_the_wrong_length(world, tmp_path):
    from medsign_forensics.errors import ModelError
    from medsign_forensics.watermark.extractor_io import load_extractor

    extractor = load_extractor(world["extractor"])
    extractor.whitening = None
    with pytest.raises(ModelError, match="whitening"):
        DecoderTrainer(
            DecoderTrainConfig(**FAST), model=world["model"], extractor=extractor, key=KEY, data=world["data"]
        )
    with pytest.raises(InputError, match="32-bit"):
        DecoderTrainer(DecoderTrainConfig(**FAST), model=world["model"], extractor=load_extractor(world["extractor"]),
                       key=key_from_hex("ab" * 6), data=world["data"])
