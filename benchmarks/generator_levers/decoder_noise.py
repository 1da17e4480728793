"""Probe: can a decoder learn to forgive the latent errors a U-Net leaves, and still draw granulomas?

`latent_noise.py` and `x0_error.py` found that both VAEs turn latent errors of the size the U-Nets leave (RMS
0.1-0.2 in the U-Net's units) into findings on normal images. Here the decoder alone is fine-tuned (the encoder,
hence the latent space the U-Net knows, stays) on stage A's lesion-phase crops of RUN's render and lesion caches,
decoding each crop's posterior mode plus Gaussian noise of a standard deviation drawn uniformly from [0, SIGMA]
times each latent channel's spread in the batch, with L1 + 0.2 SSIM + WEIGHT x (stage A's lesion and peaks terms,
`medsign_forensics.diffusion.vae_lesions`): a made-up dot costs what a missed lesion does, now also under noise.
With TRAIN=whole the encoder trains too (the latent space moves, so a U-Net would need retraining): it may then
give lesions more of the latent's amplitude, above the noise. Scored before and after as `latent_noise.py` scores
(the 200 held-out phantoms; noise 0, 0.1, 0.2 times each channel's spread over their latents, seed 0; with the
latents' drift from the original encoder's, in units of their spread). With OUT, MODEL is copied there with the
new VAE (fp16, SHA256SUMS rewritten), for `generator_eval.py` and `x0_error.py` (decoder mode only: with
TRAIN=whole the U-Net in the copy does not know the new latent).

Usage: decoder_noise.py MODEL RUN STEPS SIGMA [WEIGHT [LR [OUT]]]. Torch threads: $THREADS (default 2); share of
crops centred on a lesion: $CENTRED (default 0.7, as stage A).
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from kornia.losses import ssim_loss  # noqa: E402

from medsign_forensics.diffusion import load_model  # noqa: E402
from medsign_forensics.diffusion.loader import MANIFEST_NAME, read_manifest  # noqa: E402
from medsign_forensics.diffusion.sampling import decode  # noqa: E402
from medsign_forensics.diffusion.vae_lesions import LesionCrops, lesion_terms  # noqa: E402
from medsign_forensics.fileio import sha256_file  # noqa: E402
from medsign_forensics.evaluate.generator import THRESHOLD, _grey, present_findings, render_phantoms, score  # noqa: E402
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict  # noqa: E402

from common import held_out_texts, summary  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
model_dir, run, steps, sigma_max = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
weight = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 1e-4
out = Path(sys.argv[7]) if len(sys.argv) > 7 else None
model = load_model(model_dir)
vae = model.vae.float()
classifier = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = held_out_texts()
findings = [present_findings(text) for text in texts]
phantoms = torch.from_numpy(render_phantoms(texts, seed=0, size=256))[:, None] * 2 - 1


def encode_held_out() -> torch.Tensor:
    return torch.cat([vae.encode(phantoms[i : i + 16]).latent_dist.mode() for i in range(0, len(texts), 16)])


original = encode_held_out()


def evaluate(tag: str) -> None:
    """Noise of SIGMA times each channel's spread over the held-out latents (the U-Net's units, where the
    channels are standardised), so an encoder that grows its latents gains nothing."""
    vae.eval()
    with torch.no_grad():
        latents = encode_held_out()
        spread = latents.std(dim=(0, 2, 3), keepdim=True)
        drift = float((latents - original).pow(2).mean().sqrt() / original.std())
        for sigma in (0.0, 0.1, 0.2):
            noisy = latents + sigma * spread * torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
            images = np.concatenate([_grey(decode(model, noisy[i : i + 16])) for i in range(0, len(texts), 16)])
            scores = score(findings, predict(classifier, images), threshold=THRESHOLD)
            print(json.dumps({"tag": tag, "sigma": sigma, **summary(scores), "nodule": scores.recall("nodule"),
                              "latent_drift": round(drift, 4)}), flush=True)


size = model.image_size
count = json.loads((run / "renders.json").read_text())["done"]
images = np.memmap(run / "renders.u8", dtype=np.uint8, mode="r", shape=(count, size, size))
lesions = np.memmap(run / "lesions.u16", dtype=np.uint16, mode="r", shape=(count, size, size))
crops = LesionCrops(images, lesions, crop=128, centred=float(os.environ.get("CENTRED", "0.7")))
evaluate("before")
whole = os.environ.get("TRAIN", "decoder") == "whole"
params = list(vae.parameters()) if whole else list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
optimizer = torch.optim.AdamW(params, lr=rate, betas=(0.9, 0.99))
generator = torch.Generator().manual_seed(0)
started = time.time()
for step in range(1, steps + 1):
    batch, weights = crops.batch(8, generator)
    x = batch * 2 - 1
    with torch.set_grad_enabled(whole):
        latents = vae.encode(x).latent_dist.mode()
    sigmas = torch.rand(len(x), 1, 1, 1, generator=generator) * sigma_max
    spread = latents.detach().std(dim=(0, 2, 3), keepdim=True)
    latents = latents + sigmas * spread * torch.randn(latents.shape, generator=generator)
    vae.train()
    recon = vae.decode(latents).sample
    error = (recon - x).abs()
    lesion, peaks = lesion_terms(error, weights)
    ssim = ssim_loss((recon + 1) / 2, batch, window_size=7, max_val=1.0)
    loss = error.mean() + 0.2 * ssim + weight * (lesion + peaks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    if step % 50 == 0:
        print(json.dumps({"step": step, "loss": round(loss.item(), 4), "lesion": round(lesion.item(), 4),
                          "peaks": round(peaks.item(), 4), "s": round(time.time() - started)}), flush=True)
evaluate(f"{'whole VAE' if whole else 'decoder'} {steps} steps, sigma up to {sigma_max}, weight {weight}, lr {rate}, centred {crops.centred}")
if out is not None:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    vae.to(torch.float16).save_pretrained(out / "vae", safe_serialization=True)
    names = read_manifest(out / MANIFEST_NAME)
    (out / MANIFEST_NAME).write_text("".join(f"{sha256_file(out / n)}  {n}\n" for n in names))
    print(json.dumps({"wrote": str(out)}), flush=True)
