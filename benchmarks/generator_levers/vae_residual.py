"""Probe: a residual latent. Keep the shipped VAE's 4 latent channels exactly, add EXTRA channels for what they lose.

Why: every VAE that kept granulomas so far moved the latent space, so the U-Net had to relearn it and its images
got worse (v3, v3-norm). Here the shipped encoder's trunk and its 4 channels are frozen, so 0.2.0's U-Net stays
valid for them; a new encoder head writes EXTRA more channels from the same trunk features, and the quant
convolutions and the decoder learn to use them. At the start the extra channels enter the decoder with zero
weights, so the VAE reconstructs exactly as the shipped one. Loss: stage A's (L1, SSIM, spectrum, KL) plus the
lesion phase's lesion and peaks terms (`medsign_forensics.diffusion.vae_lesions`, weight W) plus SPARSITY x the
mean |extra channels| (posterior means), so they stay quiet except where the 4 channels fall short.

With ANCHOR > 0 the encoder's trunk trains too (the old channels' rows of its last convolutions stay frozen), and
ANCHOR x the squared change of the old channels' posterior means (against the shipped encoder, on the same crops,
in units of their spread) keeps them nearly where 0.2.0's U-Net knows them; each score reports the change.

Usage: vae_residual.py RUN STEPS [EXTRA [SPARSITY [W [EVERY [THREADS [ANCHOR]]]]]]. RUN: a `medsign base train` run folder of
the default data settings whose render and lesion caches are reused (renders.u8, lesions.u16). Scores the
reconstructions of the 200 held-out phantoms (judge: the shipped classifier, as `generator_eval.py`) before training
and every EVERY steps, with the extra channels' mean |value| on normal and on abnormal phantoms. Saves the VAE's
state to /tmp/vae_residual.pt.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from kornia.losses import ssim_loss

from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.data import RenderCache
from medsign_forensics.diffusion.vae_lesions import LesionCache, LesionCrops, lesion_terms
from medsign_forensics.evaluate.generator import THRESHOLD, present_findings, reconstruct, render_phantoms, score
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict

from common import held_out_texts, summary

run, steps = Path(sys.argv[1]), int(sys.argv[2])
extra = int(sys.argv[3]) if len(sys.argv) > 3 else 4
sparsity = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
weight = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
every = int(sys.argv[6]) if len(sys.argv) > 6 else 500
torch.set_num_threads(int(sys.argv[7]) if len(sys.argv) > 7 else 2)
anchor = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
torch.manual_seed(0)

model = load_model(None)
old = model.vae.float().eval()
OLD = old.config.latent_channels
L = OLD + extra
vae = AutoencoderKL.from_config({**old.config, "latent_channels": L})
state, previous = vae.state_dict(), old.state_dict()
for key, value in state.items():
    if previous[key].shape == value.shape:
        state[key] = previous[key].clone()
mean_rows, logvar_rows = list(range(OLD)), list(range(L, L + OLD))  # the old channels' rows in the new layout
old_rows = mean_rows + logvar_rows
w = state["encoder.conv_out.weight"]
w[old_rows] = previous["encoder.conv_out.weight"]
w[OLD:L] *= 0.1
w[L + OLD :] = 0.0
b = state["encoder.conv_out.bias"]
b[old_rows] = previous["encoder.conv_out.bias"]
b[OLD:L] = 0.0
b[L + OLD :] = -12.0  # the extra channels start nearly deterministic, like the old ones (posterior std ~0.002)
q = torch.zeros_like(state["quant_conv.weight"])
q[np.ix_(old_rows, old_rows)] = previous["quant_conv.weight"]
q[OLD:L, OLD:L] = torch.eye(extra)[..., None, None]
q[L + OLD :, L + OLD :] = torch.eye(extra)[..., None, None]
state["quant_conv.weight"] = q
state["quant_conv.bias"] = torch.zeros(2 * L)
state["quant_conv.bias"][old_rows] = previous["quant_conv.bias"]
p = torch.eye(L)[..., None, None].clone()
p[:OLD, :OLD] = previous["post_quant_conv.weight"]
state["post_quant_conv.weight"] = p
state["post_quant_conv.bias"] = torch.zeros(L)
state["post_quant_conv.bias"][:OLD] = previous["post_quant_conv.bias"]
c = torch.zeros_like(state["decoder.conv_in.weight"])
c[:, :OLD] = previous["decoder.conv_in.weight"]
state["decoder.conv_in.weight"] = c
vae.load_state_dict(state)

# Train: the new head's rows, the quant convolutions' new rows, post_quant_conv and the decoder. Old rows frozen.
for name, parameter in vae.named_parameters():
    parameter.requires_grad = anchor > 0 or not name.startswith("encoder.") or name.startswith("encoder.conv_out")
frozen_rows = {"encoder.conv_out.weight": old_rows, "encoder.conv_out.bias": old_rows,
               "quant_conv.weight": old_rows, "quant_conv.bias": old_rows}
for name, parameter in vae.named_parameters():
    if name in frozen_rows:
        rows = torch.tensor(frozen_rows[name])
        parameter.register_hook(lambda grad, rows=rows: grad.index_fill(0, rows, 0.0))
params = [p for p in vae.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0)
model.pipeline.vae = vae

classifier = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = held_out_texts()
findings = [present_findings(t) for t in texts]
phantoms = render_phantoms(texts, seed=0, size=256)
normal = np.array([not f for f in findings])
scored = torch.from_numpy(phantoms)[:, None] * 2 - 1
with torch.no_grad():  # the shipped encoder's posterior means of the scored phantoms: fixed, so computed once
    reference = torch.cat([old.encode(scored[i : i + 16]).latent_dist.mean for i in range(0, len(scored), 16)])


@torch.no_grad()
def evaluate(tag: str) -> None:
    vae.eval()
    rec = reconstruct(model, phantoms, batch=8)
    s = score(findings, predict(classifier, rec), threshold=THRESHOLD)
    z = torch.cat([vae.encode(scored[i : i + 16]).latent_dist.mean for i in range(0, len(scored), 16)])
    energy = z[:, OLD:].abs().mean(dim=(1, 2, 3)).numpy()
    drift = float((z[:, :OLD] - reference).pow(2).mean().sqrt() / reference.std())
    print(json.dumps({"tag": tag, **summary(s),
                      "extra_abs_normal": float(energy[normal].mean()), "extra_abs_abnormal": float(energy[~normal].mean()),
                      "old_channels_rms_change_sd": drift}), flush=True)
    vae.train()


count = int(json.loads((run / "renders.json").read_text())["done"])
images = RenderCache(run, count=count, size=256).images()
crops = LesionCrops(images, LesionCache(run, count=count, size=256).images(), crop=128, centred=0.7)
generator = torch.Generator().manual_seed(0)
evaluate("start (the shipped VAE's reconstructions)")
start = time.time()
vae.train()
for step in range(1, steps + 1):
    batch, lesions = crops.batch(16, generator)
    x = batch * 2 - 1
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample
    error = (recon - x).abs()
    ssim = ssim_loss((recon + 1) / 2, (x + 1) / 2, window_size=7, max_val=1.0) * 2
    freq = (torch.fft.rfft2(recon, norm="ortho").abs() - torch.fft.rfft2(x, norm="ortho").abs()).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()
    lesion, peaks = lesion_terms(error, lesions)
    quiet = posterior.mean[:, OLD:].abs().mean()
    loss = error.mean() + 0.2 * ssim + 0.05 * freq + 1e-6 * kl + weight * (lesion + peaks) + sparsity * quiet
    if anchor:
        with torch.no_grad():
            target = old.encode(x).latent_dist.mean
        loss = loss + anchor * ((posterior.mean[:, :OLD] - target) / target.std()).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    if step % 25 == 0:
        print(json.dumps({"step": step, "l1": error.mean().item(), "lesion": lesion.item(), "peaks": peaks.item(),
                          "extra_abs": quiet.item(), "s": round(time.time() - start, 1)}), flush=True)
    if step % every == 0 or step == steps:
        evaluate(f"step {step}")
        torch.save(vae.state_dict(), "/tmp/vae_residual.pt")
