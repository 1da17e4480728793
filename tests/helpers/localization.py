"""Tiny random Stable Diffusion parts for the localization tests: fast on CPU, meaningless as a generator."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from medsign_forensics.reports.findings import Finding, FindingKind, Side, Zone

WHOLE_WORDS = ("left", "right", "nodule", "the", "no", "small")


def tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A character-level CLIP BPE with a few whole-word merges: most medical words split into many tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,;:-()/'":
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = []
    for word in WHOLE_WORDS:
        merged = word[0]
        for index in range(1, len(word)):
            piece = word[index] + ("</w>" if index == len(word) - 1 else "")
            merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention=(True, False),  # as mini-cxr: the first level's attn1 attends to the text too
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def tiny_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def keyword_parser(sentence: str) -> Sequence[Finding]:
    """A stand-in for the findings parser, for unit tests of word selection only: a leading 'no' negates all."""
    text = sentence.lower()
    side = Side.LEFT if "left" in text else Side.RIGHT if "right" in text else Side.UNSPECIFIED
    zone = Zone.LOWER if "lower" in text or "base" in text else Zone.UPPER if "upper" in text else Zone.UNSPECIFIED
    findings = []
    for kind in (FindingKind.EFFUSION, FindingKind.NODULE, FindingKind.PNEUMOTHORAX):
        if kind.value in text:
            findings.append(Finding(kind, side, zone, negated=text.strip().startswith("no ")))
    return findings


TOKENIZER_TEXTS = (
    "Small left pleural effusion. Heart size is normal.",
    "Right upper lobe nodule. No pneumothorax.",
    "Bibasilar atelectasis and small effusions. The lungs are otherwise clear.",
    "Cardiomegaly with pulmonary edema. Calcified granuloma in the left lower lobe.",
) * 4


def build_model_folder(folder: Path) -> Path:
    """A tiny random mini-cxr folder (greyscale VAE, only-cross-attention first level), exported as shipped."""
    from medsign_forensics.diffusion.configs import build_text_encoder, build_unet, build_vae, tiny_config
    from medsign_forensics.diffusion.export import export_model
    from medsign_forensics.diffusion.tokenizer import train_tokenizer

    config = tiny_config()
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TOKENIZER_TEXTS, vocab_size=700, min_frequency=1)
    text_encoder = build_text_encoder(
        config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return export_model(
        folder, config=config, tokenizer=tokenizer, text_encoder=text_encoder, unet=build_unet(config),
        vae=build_vae(config),
    )
