from __future__ import annotations

import pytest
import torch

from medsign_forensics.diffusion import SampleOutput, decode, sample
from medsign_forensics.diffusion.configs import build_vae, tiny_config
from medsign_forensics.errors import InputError

PROMPTS = ["Left pleural effusion.", "Cardiomegaly."]


def test_shapes_range_and_metadata(grey_model) -> None:
    result = sample(grey_model, PROMPTS, seed=[3, 4], steps=3)
    assert result.images.shape == (2, 1, 64, 64) and result.images.dtype == torch.float32
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert result.latents.shape == (2, 4, 8, 8)
    assert result.seeds == (3, 4) and result.steps == 3 and result.prompts == tuple(PROMPTS)
    assert result.scheduler == "DPMSolverMultistepScheduler"


def test_same_seed_same_image_and_different_seed_differs(grey_model) -> None:
    first = sample(grey_model, PROMPTS, seed=7, steps=3)
    again = sample(grey_model, PROMPTS, seed=7, steps=3)
    other = sample(grey_model, PROMPTS, seed=8, steps=3)
    assert torch.equal(first.images, again.images) and torch.equal(first.latents, again.latents)
    assert first.seeds == (7, 8)
    assert not torch.allclose(first.latents, other.latents)


def test_image_depends_on_its_seed_not_its_batch(grey_model) -> None:
    batch = sample(grey_model, PROMPTS, seed=[11, 12], steps=3)
    alone = sample(grey_model, PROMPTS[1:], seed=[12], steps=3)
    torch.testing.assert_close(alone.latents[0], batch.latents[1], atol=1e-4, rtol=1e-4)


def test_decoding_x0_gives_the_image(grey_model) -> None:
    result = sample(grey_model, PROMPTS, seed=0, steps=3)
    with torch.no_grad():
        assert torch.equal(decode(grey_model, result.latents), result.images)


def test_x0_is_unscaled_latent(grey_model) -> None:
    """x0 is what vae.decode receives: the scheduler's output divided by the scaling factor."""
    captured = {}

    def keep(pipeline, step, timestep, kwargs):
        captured["latents"] = kwargs["latents"].clone()
        return kwargs

    result = sample(grey_model, PROMPTS[:1], seed=0, steps=3, callback_on_step_end=keep)
    scale = grey_model.vae.config.scaling_factor
    torch.testing.assert_close(result.latents, captured["latents"] / scale)


def test_other_decoder(grey_model) -> None:
    torch.manual_seed(5)
    other = build_vae(tiny_config()).eval()
    result = sample(grey_model, PROMPTS[:1], seed=0, steps=2)
    with torch.no_grad():
        image = decode(grey_model, result.latents, vae=other)
    assert image.shape == result.images.shape and not torch.allclose(image, result.images)


def test_decode_keeps_gradients(grey_model) -> None:
    latents = torch.zeros(1, 4, 8, 8, requires_grad=True)
    decode(grey_model, latents).mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_callback_is_called_each_step(grey_model) -> None:
    steps = []

    def record(pipeline, step, timestep, kwargs):
        steps.append(int(timestep))
        return kwargs

    sample(grey_model, PROMPTS[:1], seed=0, steps=4, callback_on_step_end=record)
    assert len(steps) == 4 and steps == sorted(steps, reverse=True)


def test_guidance_and_negative_prompt_change_the_result(grey_model) -> None:
    base = sample(grey_model, PROMPTS[:1], seed=0, steps=3, guidance_scale=4.0)
    negative = sample(grey_model, PROMPTS[:1], seed=0, steps=3, guidance_scale=4.0, negative_prompt="cardiomegaly")
    unguided = sample(grey_model, PROMPTS[:1], seed=0, steps=3, guidance_scale=1.0)
    assert not torch.allclose(base.latents, negative.latents)
    assert not torch.allclose(base.latents, unguided.latents)


def test_latents_only_and_images_only(grey_model) -> None:
    latents_only = sample(grey_model, PROMPTS[:1], seed=0, steps=2, output="latents")
    images_only = sample(grey_model, PROMPTS[:1], seed=0, steps=2, output=SampleOutput.IMAGES)
    assert latents_only.images is None and latents_only.latents is not None
    assert images_only.latents is None and images_only.images is not None


def test_rgb_model_gives_three_channels(rgb_model_dir) -> None:
    from medsign_forensics.diffusion import load_model

    result = sample(load_model(rgb_model_dir), PROMPTS[:1], seed=0, steps=2, height=32, width=48)
    assert result.images.shape == (1, 3, 32, 48) and result.latents.shape == (1, 4, 4, 6)


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": [1]}, {"seed": 0, "steps": 0}, {"seed": 0, "height": 60}],
)
def test_bad_arguments(grey_model, kwargs) -> None:
    with pytest.raises(InputError):
        sample(grey_model, PROMPTS, **kwargs)


def test_no_prompt(grey_model) -> None:
    with pytest.raises(InputError):
        sample(grey_model, [], seed=0)
