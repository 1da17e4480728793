"""Probe: how much error in the latent does a VAE's decoder turn into findings?

A U-Net's sample is a latent with some error left in it. Each held-out phantom (the 200 of `generator_eval.py`,
seed i) is encoded to its posterior mode, Gaussian noise of standard deviation SIGMA in the U-Net's units
(the latent times the VAE's scaling factor) is added (seed 0), and the decoded images are scored as
`generator_eval.py` scores reconstructions: if a decoder makes false findings out of small errors, normal reports
get flagged however good the U-Net becomes.

Usage: latent_noise.py MODEL SIGMA... MODEL: a model folder, or - for the shipped mini-cxr. Torch threads: $THREADS (default 2).
"""
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.diffusion import load_model  # noqa: E402
from medsign_forensics.diffusion.sampling import decode  # noqa: E402
from medsign_forensics.evaluate.generator import THRESHOLD, _grey, present_findings, render_phantoms, score  # noqa: E402
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict  # noqa: E402

from common import held_out_texts, summary  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
model = load_model(None if sys.argv[1] == "-" else sys.argv[1])
sigmas = [float(value) for value in sys.argv[2:]]
classifier = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = held_out_texts()
findings = [present_findings(text) for text in texts]
phantoms = torch.from_numpy(render_phantoms(texts, seed=0, size=256))[:, None]
scale = float(model.vae.config.scaling_factor)
with torch.no_grad():
    pixels = phantoms.repeat(1, model.image_channels, 1, 1) * 2 - 1
    latents = torch.cat([model.vae.encode(pixels[i : i + 16]).latent_dist.mode() for i in range(0, len(texts), 16)])
    for sigma in sigmas:
        noisy = latents + sigma / scale * torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        images = np.concatenate([_grey(decode(model, noisy[i : i + 16])) for i in range(0, len(texts), 16)])
        scores = score(findings, predict(classifier, images), threshold=THRESHOLD)
        print(json.dumps({"model": sys.argv[1], "sigma": sigma, **summary(scores),
                          "nodule": round(scores.recall("nodule"), 3)}), flush=True)
