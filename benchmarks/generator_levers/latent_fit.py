"""Probe: can the shipped decoder draw a granuloma at all, from some latent the encoder does not give it?

Why: the shipped VAE's reconstructions never keep a granuloma (recall 0), and every VAE that keeps them changed
the latent space, which 0.2.0's U-Net then had to learn anew (v3, v3-norm, the residual latent). If the
shipped decoder can draw a granuloma from a suitable latent, the VAE (and every decoder fine-tuned from it,
the demo deployment's included) can stay as it is: the U-Net would be trained on fitted latents instead of the
encoder's. Here each held-out phantom's latent starts at the encoder's posterior mode and is fitted by Adam
through the frozen decoder: L1 + W x the lesion phase's lesion and peaks terms (exact lesion masks,
`medsign_forensics.diffusion.vae_lesions`) + PRIOR x its squared change in units of the latents' spread.

Usage: latent_fit.py STEPS [W [PRIOR [LR [KINDS]]]]. KINDS: comma-separated finding kinds whose reports are
fitted (default granuloma,nodule), or `all`. Prints, at steps 0 and every STEPS/4, the judge's recall per kind on
the fitted reports' decoded latents, and how far the latents moved (rms, in units of their spread; inside and
outside lesion cells). Saves the fitted latents to /tmp/latent_fit.pt.
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.data import kind_masks
from medsign_forensics.diffusion.vae_lesions import lesion_bits, lesion_terms, lesion_weights
from medsign_forensics.evaluate.generator import THRESHOLD, present_findings, render_phantoms, score
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict

from common import held_out_texts, summary

steps = int(sys.argv[1])
weight = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
prior = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
wanted = sys.argv[5] if len(sys.argv) > 5 else "granuloma,nodule"
torch.set_num_threads(2)
torch.manual_seed(0)

model = load_model(None)
vae = model.vae.float().eval()
for parameter in vae.parameters():
    parameter.requires_grad_(False)
classifier = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = held_out_texts()
findings = [present_findings(t) for t in texts]
chosen = [i for i, f in enumerate(findings) if f and (wanted == "all" or {x.kind.value for x in f} & set(wanted.split(",")))]
chosen_findings = [findings[i] for i in chosen]
phantoms = np.stack([render_phantoms([texts[i]], seed=i, size=256)[0] for i in chosen])
# the lesion bit map LesionCache stores, from the same findings and seed as the phantom
weights = [lesion_weights(lesion_bits(kind_masks(findings[i], seed=i, size=256, grid=256), 256)) for i in chosen]
x = torch.from_numpy(phantoms)[:, None] * 2 - 1
w = torch.from_numpy(np.stack(weights))[:, None]
with torch.no_grad():
    z0 = torch.cat([vae.encode(x[i : i + 16]).latent_dist.mode() for i in range(0, len(x), 16)])
spread = z0.std()
lesion_cells = F.max_pool2d((w > 0).float(), 8).expand_as(z0) > 0
z = z0.clone().requires_grad_(True)
optimizer = torch.optim.Adam([z], lr=lr)
print(json.dumps({"reports": len(chosen), "kinds": wanted, "steps": steps, "weight": weight, "prior": prior, "lr": lr}))


@torch.no_grad()
def evaluate(step: int) -> None:
    images = torch.cat([vae.decode(z[i : i + 16]).sample for i in range(0, len(z), 16)])
    grey = ((images[:, 0] + 1) / 2).clamp(0, 1).numpy()
    s = score(chosen_findings, predict(classifier, grey), threshold=THRESHOLD)
    moved = (z - z0) / spread
    print(json.dumps({"step": step, "recall": {k: round(s.recall(k), 3) for k in s.reports},
                      "n": dict(s.reports), "macro": round(summary(s)["macro"], 3),
                      "moved_rms_in_lesion_cells": float(moved[lesion_cells].pow(2).mean().sqrt()),
                      "moved_rms_elsewhere": float(moved[~lesion_cells].pow(2).mean().sqrt()),
                      "l1": float((images - x).abs().mean())}), flush=True)


evaluate(0)
start = time.time()
for step in range(1, steps + 1):
    total = 0.0
    optimizer.zero_grad(set_to_none=True)
    for i in range(0, len(z), 16):
        recon = vae.decode(z[i : i + 16]).sample
        error = (recon - x[i : i + 16]).abs()
        lesion, peaks = lesion_terms(error, w[i : i + 16])
        loss = error.mean() + weight * (lesion + peaks) + prior * ((z[i : i + 16] - z0[i : i + 16]) / spread).pow(2).mean()
        loss.backward()
        total += loss.item()
    optimizer.step()
    if step % max(1, steps // 4) == 0 or step == steps:
        print(json.dumps({"step": step, "loss": round(total, 4), "s": round(time.time() - start, 1)}), flush=True)
        evaluate(step)
        torch.save({"chosen": chosen, "z0": z0, "z": z.detach()}, "/tmp/latent_fit.pt")
