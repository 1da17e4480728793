from __future__ import annotations

import numpy as np
import torch

from medsign_forensics.diffusion import sample
from medsign_forensics.localization.generation import generate_with_maps
from medsign_forensics.localization.maps import MapOptions

REPORTS = ["Small left pleural effusion.", "Heart size is normal. No pneumothorax."]


def test_generation_gives_the_same_images_and_one_map_per_report(model):
    generated = generate_with_maps(model, REPORTS, seed=5, steps=3)
    plain = sample(model, REPORTS, seed=5, steps=3)
    assert torch.equal(generated.sample.latents, plain.latents)
    assert torch.equal(generated.sample.images, plain.images)
    effusion, normal = generated.localizations
    assert [w.tokens.word.text for w in effusion.words] == ["left", "effusion"]
    assert effusion.a_loc.shape == (64, 64) and (effusion.a_loc > 0.5).any()
    assert normal.normal and not normal.a_loc.any()
    assert generated.maps.shape == (2, 1, 64, 64)
    assert all(not hasattr(p, "capture") for p in model.unet.attn_processors.values())


def test_generation_without_guidance_and_with_step_selection(model):
    every = generate_with_maps(model, REPORTS[:1], seed=1, steps=3, guidance_scale=1.0)
    last = generate_with_maps(model, REPORTS[:1], seed=1, steps=3, guidance_scale=1.0, select=lambda i, t: i == 2)
    assert torch.equal(every.sample.latents, last.sample.latents)
    assert not np.array_equal(every.localizations[0].words[0].a_avg, last.localizations[0].words[0].a_avg)
    ablated = generate_with_maps(model, REPORTS[:1], seed=1, steps=3, options=MapOptions(cas=False, aas=False))
    assert ablated.localizations[0].a_loc.max() == np.float32(1.0)


def test_a_batch_of_normal_reports_runs_without_capture(model, monkeypatch):
    from medsign_forensics.localization import generation

    def refuse(*args, **kwargs):
        raise AssertionError("no capture for normal reports")

    monkeypatch.setattr(generation, "CrossAttentionCapture", refuse)
    result = generate_with_maps(model, ["Lungs are clear."], seed=0, steps=2)
    assert result.localizations[0].normal
