"""Probe: do the initial noise's low frequencies make the false findings on normal reports?

Why: the training schedule's last timestep keeps 6.8 % of the signal (no zero terminal SNR), so a model can read an
image's low frequencies from the noise, and a hazy or lopsided start might become edema or an effusion.
Usage: noise_lowfreq.py MODEL MODES; each mode is "plain" (the seeded noise sample() would draw) or "lowK" (the
same noise minus its K x K block means over the 32 x 32 latent, rescaled to unit spread; low1 removes each
channel's mean). The first 64 normal held-out reports, findings prompts, layouts and seeds as normal_guidance.py;
prints the share of images with any predicted label, their mean grey and the labels."""
import sys, json
import numpy as np, torch
import torch.nn.functional as F
from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.evaluate.generator import _grey
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier
from medsign_forensics.reports.prompt import findings_prompt
from common import flagged, normal_texts
torch.set_num_threads(2)
model = load_model(sys.argv[1])
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = normal_texts(64)
C = model.unet.config.in_channels
def noise(seed, mode):
    z = torch.randn((1, C, 32, 32), generator=torch.Generator("cpu").manual_seed(seed))
    if mode == "plain":
        return z
    k = int(mode[3:])  # "low4": remove k x k block means
    low = F.interpolate(F.avg_pool2d(z, 32 // k), scale_factor=32 // k, mode="nearest")
    z = z - low
    return z / z.std()
for mode in sys.argv[2:]:
    imgs = []
    for s in range(0, len(texts), 8):
        chunk = texts[s:s+8]
        seeds = [s + i for i in range(len(chunk))]
        lay = report_layouts(chunk, seeds=[2_000_000 + x for x in seeds], size=256, grid=32)
        lat = torch.cat([noise(x, mode) for x in seeds])
        r = sample(model, [findings_prompt(t) for t in chunk], seed=seeds, latents=lat, layout=lay, output="images")
        imgs.append(_grey(r.images))
    imgs = np.concatenate(imgs)
    print(json.dumps({"mode": mode, **flagged(clf, imgs), "mean": float(imgs.mean())}), flush=True)
