"""Probe: false findings on normal reports against guidance and a negative prompt (a layout model; empty layouts).

Usage: normal_guidance.py MODEL SETTINGS; each setting is GUIDANCE:NEGATIVE(- for none, _ for spaces):
LAYOUT_GUIDANCE(0|1)[:STEPS] (sampling steps, default 25), or "phantoms" (the reports' phantoms and their VAE
reconstructions, the judge's floor). Samples the first 64 normal reports among the 200 held-out ones (findings prompts, seeds as
generator_eval.py) and counts the images with any predicted label, and the labels."""
import sys, json, collections
import numpy as np, torch
from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.evaluate.generator import present_findings, _grey, THRESHOLD, render_phantoms, reconstruct
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict, LABELS
from medsign_forensics.reports import load_reports, split_reports
from medsign_forensics.diffusion.configs import DataConfig
from medsign_forensics.reports.prompt import findings_prompt
torch.set_num_threads(2)
model = load_model(sys.argv[1])
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
d = DataConfig()
_, test = split_reports(load_reports(d.corpus), test_fraction=d.test_fraction, seed=d.split_seed)
texts = [r.text for r in test[:200] if not present_findings(r.text)][:64]
def tally(setting, imgs):
    p = predict(clf, imgs) >= THRESHOLD
    c = collections.Counter(LABELS[j] for row in p for j in np.flatnonzero(row))
    print(json.dumps({"setting": setting, "n": len(texts), "flagged": float(p.any(1).mean()), "labels": dict(c.most_common(6))}), flush=True)
for setting in sys.argv[2:]:
    if setting == "phantoms":
        ph = render_phantoms(texts, seed=0, size=256)
        tally("phantoms", ph); tally("reconstructions", reconstruct(model, ph, batch=8))
        continue
    g, neg, lg, *steps = setting.split(":")
    g = float(g); neg = None if neg == "-" else neg.replace("_", " "); lg = lg == "1"; steps = int(steps[0]) if steps else 25
    imgs = []
    for s in range(0, len(texts), 8):
        chunk = texts[s:s+8]
        lay = report_layouts(chunk, seeds=[2_000_000 + s + i for i in range(len(chunk))], size=256, grid=32)
        r = sample(model, [findings_prompt(t) for t in chunk], seed=[s + i for i in range(len(chunk))], guidance_scale=g,
                   negative_prompt=neg, layout=lay, layout_guidance=lg, steps=steps, output="images")
        imgs.append(_grey(r.images))
    tally(setting, np.concatenate(imgs))
