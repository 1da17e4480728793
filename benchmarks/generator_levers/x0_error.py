"""Probe: how far is a U-Net's clean-latent estimate from the truth, against what its decoder forgives?

`latent_noise.py` found how much latent error a decoder turns into findings (white noise of SIGMA in the U-Net's
units: 0.2 flags about 0.17 of normal reports for both VAEs). This measures the U-Net's side of that bargain in
the same units, in seconds rather than the 12 minutes of `generator_eval.py`, so a long run's checkpoints can be
followed. Each held-out phantom (the 200 of `generator_eval.py`, seed i) is encoded to its posterior mode and
noised to timestep t (noise seed 0); the U-Net, given the report's findings prompt and the phantom's own layout
(no guidance), predicts, and x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v (v-prediction; epsilon models likewise). Per t:
the latents' own standard deviation (the scale the errors are in) and the RMS of x0's error over normal reports,
over reports with findings, over their lesion cells (latent cells the lesion masks touch), of the error's
4 x 4-cell means (the coarse anatomy) and per latent channel. At the timesteps in DECODE, the decoded one-step
estimates are scored as `generator_eval.py` scores images (normal reports flagged, macro recall).

Usage: x0_error.py MODEL [T,T,...] [DECODE=T,T]. MODEL: a model folder, or - for the shipped mini-cxr. Torch
threads: $THREADS (default 2).
"""
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.diffusion import load_model  # noqa: E402
from medsign_forensics.diffusion.conditioning import model_layouts  # noqa: E402
from medsign_forensics.diffusion.layout import adapter_residuals  # noqa: E402
from medsign_forensics.diffusion.sampling import decode  # noqa: E402
from medsign_forensics.evaluate.generator import THRESHOLD, _grey, present_findings, score  # noqa: E402
from medsign_forensics.evaluate.localization import kind_masks  # noqa: E402
from medsign_forensics.phantom import render_report  # noqa: E402
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict  # noqa: E402
from medsign_forensics.reports.prompt import prompt_function  # noqa: E402

from common import held_out_texts, summary  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
model = load_model(None if sys.argv[1] == "-" else sys.argv[1])
args = [a for a in sys.argv[2:] if not a.startswith("DECODE=")]
timesteps = [int(t) for t in (args[0] if args else "25,50,100,200,400,700").split(",")]
decoded_at = {int(t) for a in sys.argv[2:] if a.startswith("DECODE=") for t in a[7:].split(",")}
texts = held_out_texts()
findings = [present_findings(text) for text in texts]
normal = torch.tensor([not f for f in findings])
studies = [render_report(text, seed=i, size=model.image_size)[0] for i, text in enumerate(texts)]
grid = model.image_size // model.vae_scale_factor
cells = torch.zeros(len(texts), 1, grid, grid, dtype=torch.bool)
for i, study in enumerate(studies):
    for mask in kind_masks(study).values():
        cell = mask.shape[0] // grid
        cells[i, 0] |= torch.from_numpy(mask.reshape(grid, cell, grid, cell).any((1, 3)))
prompt = prompt_function(model.prompt_form)
scale = float(model.vae.config.scaling_factor)
alphas = model.scheduler.alphas_cumprod
v_prediction = model.scheduler.config.prediction_type == "v_prediction"
classifier = load_classifier(DEFAULT_CLASSIFIER_DIR) if decoded_at else None
with torch.no_grad():
    pixels = torch.from_numpy(np.stack([s.image for s in studies]))[:, None].float()
    pixels = pixels.repeat(1, model.image_channels, 1, 1) * 2 - 1
    latents = torch.cat([model.vae.encode(pixels[i : i + 16]).latent_dist.mode() for i in range(0, len(texts), 16)])
    latents = latents * scale
    ids = model.tokenizer([prompt(t) for t in texts], padding="max_length", truncation=True,
                          max_length=model.tokenizer.model_max_length, return_tensors="pt").input_ids
    states = torch.cat([model.text_encoder(ids[i : i + 16])[0] for i in range(0, len(texts), 16)])
    layouts = model_layouts(model, texts, list(range(len(texts)))) if model.adapter is not None else None
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        a = alphas[t]
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        estimates = []
        for i in range(0, len(texts), 16):
            x_t = noisy[i : i + 16]
            extra = {}
            if layouts is not None:
                extra["down_intrablock_additional_residuals"] = adapter_residuals(model.adapter, layouts[i : i + 16])
            out = model.unet(x_t, torch.full((len(x_t),), t), states[i : i + 16], **extra).sample
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * out if v_prediction else (x_t - (1 - a).sqrt() * out) / a.sqrt()
            estimates.append(x0)
        difference = torch.cat(estimates) - latents
        error = difference**2
        coarse = torch.nn.functional.avg_pool2d(difference, 4)
        row = {"model": sys.argv[1], "t": t, "latent_sd": round(float(latents.std()), 3),
               "noise_sd": round(float((1 - a).sqrt() / a.sqrt()), 3),
               "rms_normal": round(float(error[normal].mean().sqrt()), 4),
               "rms_findings": round(float(error[~normal].mean().sqrt()), 4),
               "rms_lesion_cells": round(float(error.mean(1, keepdim=True)[cells].mean().sqrt()), 4),
               "rms_coarse": round(float(coarse.pow(2).mean().sqrt()), 4),
               "rms_channels": [round(float(c), 3) for c in error.mean((0, 2, 3)).sqrt()]}
        if t in decoded_at:
            images = np.concatenate([_grey(decode(model, e / scale)) for e in estimates])
            row.update(summary(score(findings, predict(classifier, images), threshold=THRESHOLD)))
        print(json.dumps(row), flush=True)
