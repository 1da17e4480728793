"""Probe: false findings on normal reports against guidance and a negative prompt (a layout model; empty layouts).

Usage: normal_guidance.py MODEL [seeds=BASE] [n=N] SETTINGS; each setting is GUIDANCE:NEGATIVE(- for none, _ for spaces):
LAYOUT_GUIDANCE(0|1)[:STEPS] (sampling steps, default 25), or "phantoms" (the reports' phantoms and their VAE
reconstructions, the judge's floor). Samples the first 64 normal reports among the 200 held-out ones (findings prompts;
image seeds 0..63, layout seeds 2,000,000 + the same) and counts the images with any predicted label, and the labels.
Every normal report has the same findings prompt, so `seeds=BASE n=N` (N images, the normal reports cycled, image
seeds BASE.., layout seeds 2,000,000 + BASE..) measures the same settings on other noise: a validation set for
choosing a setting, apart from the seeds the evaluation uses."""
import sys, json
import numpy as np, torch
from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.evaluate.generator import _grey, render_phantoms, reconstruct
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier
from medsign_forensics.reports.prompt import findings_prompt
from common import flagged, normal_texts
torch.set_num_threads(2)
model = load_model(sys.argv[1])
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
options = dict(a.split("=") for a in sys.argv[2:] if "=" in a)
base, count = int(options.get("seeds", 0)), int(options.get("n", 64))
pool = normal_texts(count)
texts = [pool[i % len(pool)] for i in range(count)]
def tally(setting, imgs):
    print(json.dumps({"setting": setting, "seeds": base, "n": len(texts), **flagged(clf, imgs)}), flush=True)
for setting in [a for a in sys.argv[2:] if "=" not in a]:
    if setting == "phantoms":
        ph = render_phantoms(texts, seed=0, size=256)
        tally("phantoms", ph); tally("reconstructions", reconstruct(model, ph, batch=8))
        continue
    g, neg, lg, *steps = setting.split(":")
    g = float(g); neg = None if neg == "-" else neg.replace("_", " "); lg = "all" if lg == "1" else "off"; steps = int(steps[0]) if steps else 25
    imgs = []
    for s in range(0, len(texts), 8):
        chunk = texts[s:s+8]
        lay = report_layouts(chunk, seeds=[2_000_000 + base + s + i for i in range(len(chunk))], size=256, grid=32)
        r = sample(model, [findings_prompt(t) for t in chunk], seed=[base + s + i for i in range(len(chunk))], guidance_scale=g,
                   negative_prompt=neg, layout=lay, layout_guidance=lg, steps=steps, output="images")
        imgs.append(_grey(r.images))
    tally(setting, np.concatenate(imgs))
