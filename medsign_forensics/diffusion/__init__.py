"""The base text-to-image model: load mini-cxr or any local SD-1.x folder, sample images and x0, train mini-cxr.

from medsign_forensics.diffusion import load_model, sample, decode
model = load_model()                       # the shipped mini-cxr; load_model("path/to/roentgen") for others
result = sample(model, ["Small left pleural effusion."], seed=0)
result.images                              # (1, 1, 256, 256) float32 in [0, 1]
result.latents                             # x0 (1, 4, 32, 32): what the VAE decoder receives
decode(model, result.latents, vae=watermarked_vae)
"""

from medsign_forensics.diffusion.loader import DEFAULT_MODEL_DIR, DiffusionModel, load_model
from medsign_forensics.diffusion.sampling import SampleOutput, SampleResult, decode, sample
from medsign_forensics.diffusion.tokenizer import word_token_spans

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DiffusionModel",
    "SampleOutput",
    "SampleResult",
    "decode",
    "load_model",
    "sample",
    "word_token_spans",
]
