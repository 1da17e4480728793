from __future__ import annotations

import pytest
import torch

from medsign_forensics.localization.capture import CrossAttentionCapture, layer_grid


def _inputs(batch: int, height: int = 6, width: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, height, width, generator=generator), torch.randn(batch, 77, 32, generator=generator)


def test_processors_restored_and_only_cross_attention_replaced(unet):
    before = dict(unet.attn_processors)
    with CrossAttentionCapture(unet, conditional_batch=1):
        during = unet.attn_processors
        replaced = {key for key, processor in during.items() if processor is not before[key]}
    # every attn2, plus attn1 of the only_cross_attention level (down 0, up 1); the mid block's attn1 is self
    cross = {key for key in before if key.endswith("attn2.processor")}
    only_cross = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1.processor",
    }
    assert replaced == cross | only_cross
    after = unet.attn_processors
    assert all(after[key] is before[key] for key in before)


def test_processors_restored_after_an_error(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with CrossAttentionCapture(unet, conditional_batch=1):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[key] is before[key] for key in before)
    assert not unet._forward_pre_hooks


@torch.no_grad()
def test_capture_does_not_change_the_unet_output(unet):
    latents, text = _inputs(2)
    plain = unet(latents, 500, encoder_hidden_states=text).sample
    with CrossAttentionCapture(unet, conditional_batch=1) as capture:
        captured = unet(latents, 500, encoder_hidden_states=text).sample
    assert capture.steps_captured == 1
    assert torch.equal(plain, captured)


@torch.no_grad()
def test_probabilities_match_the_reference_attention_scores(unet):
    latents, text = _inputs(1)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    module = unet.get_submodule(name)
    seen = {}

    def grab(mod, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["text"] = kwargs["encoder_hidden_states"]

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    with CrossAttentionCapture(unet, conditional_batch=1) as capture:
        unet(latents, 10, encoder_hidden_states=text)
    handle.remove()
    query = module.head_to_batch_dim(module.to_q(seen["hidden"]))
    key = module.head_to_batch_dim(module.to_k(seen["text"]))
    reference = module.get_attention_scores(query, key).view(1, module.heads, 60, 77).sum(1)
    layer = capture.result().layers[name]
    assert layer.heads == module.heads
    assert torch.allclose(layer.sums[0], reference[0].T.reshape(77, 6, 10), atol=1e-5)
    # each position's probabilities over the tokens sum to one per head
    assert torch.allclose(layer.sums.sum(1), torch.full((1, 6, 10), float(module.heads)), atol=1e-4)


@torch.no_grad()
def test_non_square_latent_gives_grids_with_its_aspect(unet):
    latents, text = _inputs(1, height=6, width=10)
    with CrossAttentionCapture(unet, conditional_batch=1) as capture:
        unet(latents, 10, encoder_hidden_states=text)
    result = capture.result()
    assert result.latent_size == (6, 10)
    grids = {layer.grid for layer in result.layers.values()}
    assert grids == {(6, 10), (3, 5)}


@torch.no_grad()
def test_guidance_keeps_the_conditional_half(unet):
    latents, text = _inputs(1)
    uncond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(7))
    with CrossAttentionCapture(unet, conditional_batch=1) as guided:
        unet(latents.repeat(2, 1, 1, 1), 10, encoder_hidden_states=torch.cat([uncond, text]))
    with CrossAttentionCapture(unet, conditional_batch=1) as alone:
        unet(latents, 10, encoder_hidden_states=text)
    with CrossAttentionCapture(unet, conditional_batch=1) as wrong:
        unet(latents, 10, encoder_hidden_states=uncond)
    for name, layer in guided.result().layers.items():
        assert torch.allclose(layer.sums, alone.result().layers[name].sums, atol=1e-5)
        assert not torch.allclose(layer.sums, wrong.result().layers[name].sums, atol=1e-3)


@torch.no_grad()
def test_unexpected_batch_size_is_an_error(unet):
    latents, text = _inputs(3)
    with pytest.raises(ValueError, match="3 rows"):
        with CrossAttentionCapture(unet, conditional_batch=2):
            unet(latents, 10, encoder_hidden_states=text)


@torch.no_grad()
def test_step_selection_sums_only_selected_steps(unet):
    latents, text = _inputs(1)
    timesteps = (900, 500, 100)
    with CrossAttentionCapture(unet, conditional_batch=1, select=lambda step, t: t == 500) as selected:
        for t in timesteps:
            unet(latents, t, encoder_hidden_states=text)
    with CrossAttentionCapture(unet, conditional_batch=1) as single:
        unet(latents, 500, encoder_hidden_states=text)
    with CrossAttentionCapture(unet, conditional_batch=1) as every:
        for t in timesteps:
            unet(latents, t, encoder_hidden_states=text)
    assert (selected.steps_seen, selected.steps_captured, every.steps_captured) == (3, 1, 3)
    name = next(iter(single.result().layers))
    assert torch.allclose(selected.result().layers[name].sums, single.result().layers[name].sums, atol=1e-6)
    assert every.result().steps == 3
    layer = every.result().layers[name]
    assert torch.allclose(layer.sums.sum(1), torch.tensor(3.0 * layer.heads), atol=1e-3)


def test_nothing_captured_is_an_error(unet):
    with CrossAttentionCapture(unet, conditional_batch=1) as capture:
        pass
    with pytest.raises(ValueError, match="nothing was captured"):
        capture.result()


@pytest.mark.parametrize(
    ("positions", "latent", "grid"),
    [(35, (5, 7), (5, 7)), (12, (5, 7), (3, 4)), (4, (5, 7), (2, 2)), (32, (4, 8), (4, 8)), (8, (4, 8), (2, 4))],
)
def test_layer_grid_follows_the_unet_rounding(positions, latent, grid):
    assert layer_grid(positions, latent) == grid


def test_layer_grid_rejects_an_impossible_length():
    with pytest.raises(ValueError, match="not supported"):
        layer_grid(7, (4, 8))


@torch.no_grad()
def test_an_encoder_attention_mask_is_honoured(unet):
    latents, text = _inputs(2)
    keep = torch.ones(2, 77)
    keep[:, 10:] = 0  # tokens 10.. are padding the model must not attend to
    plain = unet(latents, 5, encoder_hidden_states=text, encoder_attention_mask=keep).sample
    with CrossAttentionCapture(unet, conditional_batch=1) as capture:
        captured = unet(latents, 5, encoder_hidden_states=text, encoder_attention_mask=keep).sample
    assert torch.equal(plain, captured)
    # attn2 gets the encoder mask; an only-cross-attention attn1 is called without it by diffusers itself
    layers = [layer for name, layer in capture.result().layers.items() if name.endswith("attn2")]
    assert len(layers) == 4
    for layer in layers:
        assert layer.sums[:, 10:].abs().max() < 1e-6
        assert torch.allclose(layer.sums[:, :10].sum(1), torch.tensor(float(layer.heads)), atol=1e-4)
