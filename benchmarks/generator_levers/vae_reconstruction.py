"""Probe: what survives a VAE alone? Encode each of the 200 held-out phantoms to its posterior mode, decode, and
score the reconstructions with the shipped classifier; PSNR against the phantoms beside it.

Usage: vae_reconstruction.py RECIPE CHECKPOINT|shipped. CHECKPOINT is a `medsign base train --stage vae` run's
vae/checkpoint.pt (RECIPE: the recipe it was trained with, for the architecture); "shipped" scores the shipped
mini-cxr's VAE (RECIPE unused)."""
import sys, json
import numpy as np, torch
from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.configs import load_config, build_vae
from medsign_forensics.evaluate.generator import render_phantoms, score, present_findings, THRESHOLD
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict
from common import held_out_texts
torch.set_num_threads(2)
if sys.argv[2] == "shipped":
    vae = load_model(None).vae.float()
else:
    vae = build_vae(load_config(sys.argv[1]))
    state = torch.load(sys.argv[2], map_location="cpu", weights_only=False)
    vae.load_state_dict(state["trainer"]["vae"] if "trainer" in state else state["vae"])
vae.eval()
texts = held_out_texts()
ph = render_phantoms(texts, seed=0, size=256)
out = []
with torch.no_grad():
    for s in range(0, len(ph), 8):
        x = torch.from_numpy(ph[s:s+8])[:, None] * 2 - 1
        out.append(((vae.decode(vae.encode(x).latent_dist.mode()).sample[:, 0] + 1) / 2).clamp(0, 1).numpy())
rec = np.concatenate(out)
sc = score([present_findings(t) for t in texts], predict(load_classifier(DEFAULT_CLASSIFIER_DIR), rec), threshold=THRESHOLD)
print(json.dumps({"vae": sys.argv[2], "macro": sc.macro_recall(20), "recall": {k: sc.recall(k) for k in sc.macro_kinds(20)},
                  "normal": sc.normal_rate(), "psnr": float(10 * np.log10(1 / np.mean((rec - ph) ** 2)))}), flush=True)
