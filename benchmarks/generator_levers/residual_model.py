"""Probe, step 2 of the residual latent (`vae_residual.py`): the shipped mini-cxr with that VAE, ready for stage B.

Usage: residual_model.py VAE_STATE RUN OUT. VAE_STATE: the state `vae_residual.py` saved; RUN: a run folder whose
render cache is used to measure the extra channels. OUT becomes a model folder (`load_model` reads it; SHA256SUMS
rewritten) that `medsign base train --stage unet --init-from OUT` continues (with the layout recipe and
`vae.latent_channels` 8; not run yet: the VAE did not keep granulomas, BENCHMARKS.md "A residual latent"):
- the VAE's extra channels are scaled (folded into its 1x1 convolutions) so their spread matches the old
  channels'; the old channels, and so every latent 0.2.0's U-Net knows, are untouched;
- the U-Net's first convolution reads the extra channels with zero weights and its last one writes them with
  zero weights: at the start it denoises the old channels exactly as 0.2.0 does.
"""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from medsign_forensics.diffusion import load_model
from medsign_forensics.diffusion.data import RenderCache, to_tensor
from medsign_forensics.diffusion.latent_norm import channel_stats, fold_channel_norm

state_path, run, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(2)
shipped = load_model(None)
state = torch.load(state_path, weights_only=True)
L = state["post_quant_conv.weight"].shape[0]
OLD = shipped.vae.config.latent_channels
vae = AutoencoderKL.from_config({**shipped.vae.config, "latent_channels": L})
vae.load_state_dict(state)
vae.eval()

count = int(json.loads((run / "renders.json").read_text())["done"])
images = RenderCache(run, count=count, size=256).images()
rows = np.random.default_rng(0).choice(count, 512, replace=False)
with torch.no_grad():
    z = torch.cat([vae.encode(to_tensor(images[np.sort(rows[i : i + 64])]) * 2 - 1).latent_dist.mean
                   for i in range(0, 512, 64)])
mean, std = channel_stats(z)
print("channel means", [round(v, 3) for v in mean.tolist()], "stds", [round(v, 3) for v in std.tolist()])
target = float(std[:OLD].mean())
scale = torch.ones(L, dtype=torch.float64)
scale[OLD:] = std[OLD:] / target
fold_channel_norm(vae, torch.zeros(L, dtype=torch.float64), scale)
with torch.no_grad():
    z2 = torch.cat([vae.encode(to_tensor(images[np.sort(rows[i : i + 64])]) * 2 - 1).latent_dist.mean
                    for i in range(0, 128, 64)])
print("after folding: stds", [round(v, 3) for v in channel_stats(z2)[1].tolist()],
      "old channels max change", float((z2[:, :OLD] - z[:128, :OLD]).abs().max()))

unet = shipped.unet.float()
wide = UNet2DConditionModel.from_config({**unet.config, "in_channels": L, "out_channels": L})
weights = wide.state_dict()
for key, value in unet.state_dict().items():
    if weights[key].shape == value.shape:
        weights[key] = value.clone()
weights["conv_in.weight"] = torch.zeros_like(weights["conv_in.weight"])
weights["conv_in.weight"][:, :OLD] = unet.state_dict()["conv_in.weight"]
weights["conv_out.weight"] = torch.zeros_like(weights["conv_out.weight"])
weights["conv_out.weight"][:OLD] = unet.state_dict()["conv_out.weight"]
weights["conv_out.bias"] = torch.zeros_like(weights["conv_out.bias"])
weights["conv_out.bias"][:OLD] = unet.state_dict()["conv_out.bias"]
wide.load_state_dict(weights)

if out.exists():
    shutil.rmtree(out)
shutil.copytree(shipped.path, out)
for part, module in (("vae", vae), ("unet", wide)):
    shutil.rmtree(out / part)
    module.save_pretrained(str(out / part), safe_serialization=True)
listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines() if line.strip()]
(out / "SHA256SUMS").write_text("".join(
    f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}\n" for name in listed))
print("wrote", out, "; loads:", load_model(out).name)
