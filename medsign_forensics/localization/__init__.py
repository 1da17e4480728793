"""The pathology localization map A_loc from the diffusion U-Net's cross-attention (MedSign section 2.2.1).

The report's medical words and their prompt token positions come from :mod:`medsign_forensics.reports.words`
(re-exported here), which grounded training of mini-cxr uses too.

capture    records cross-attention probabilities without changing the U-Net's output
maps       per-token maps -> A_avg, CAS, AAS -> A_loc; combination over words
generation maps during generation: sample images and x0 with the capture installed
inversion  maps for an existing image and its report (one noised denoising step per timestep)
metrics    pointing game, peak distance and IoU against ground-truth lesion masks
"""

from medsign_forensics.localization.capture import CapturedAttention, CrossAttentionCapture, every_step
from medsign_forensics.localization.generation import GeneratedMaps, generate_with_maps
from medsign_forensics.localization.inversion import DEFAULT_TIMESTEPS, ImageAttention, capture_image, localize_image
from medsign_forensics.localization.maps import Localization, MapOptions, WordMap, localize_captured
from medsign_forensics.localization.metrics import iou, peak_distance, pointing_game
from medsign_forensics.reports.words import MedicalWord, WordTokens, medical_words, word_tokens

__all__ = [
    "DEFAULT_TIMESTEPS",
    "GeneratedMaps",
    "CapturedAttention",
    "CrossAttentionCapture",
    "ImageAttention",
    "Localization",
    "MapOptions",
    "MedicalWord",
    "WordMap",
    "WordTokens",
    "capture_image",
    "every_step",
    "generate_with_maps",
    "iou",
    "localize_captured",
    "localize_image",
    "medical_words",
    "peak_distance",
    "pointing_game",
    "word_tokens",
]
