"""Probe: the stated side with a layout adapter, against the scale of the adapter's features and layout guidance.

Usage: layout_side.py MODEL N SETTINGS; each setting is SCALE:LAYOUT_GUIDANCE(0|1):GUIDANCE. Scores the first N
held-out left/right prompts of generator_eval.py (findings prompts, layouts with seeds 2000000+i) and tallies each
image's drawn side for the prompt's kind: right, wrong (the other side), both, none."""
import sys, json, collections
import numpy as np, torch
from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.evaluate.generator import sided_prompts, present_findings, _grey, score, THRESHOLD, LABEL_INDEX, label_name, _PAIRED_SIDES
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict
from medsign_forensics.reports.prompt import findings_prompt
torch.set_num_threads(2)
model = load_model(sys.argv[1])
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = sided_prompts(int(sys.argv[2]))
truth = [present_findings(t) for t in texts]
forward = model.adapter.forward
for setting in sys.argv[3:]:
    scale, lg, g = setting.split(":"); scale = float(scale); lg = "all" if lg == "1" else "off"; g = float(g)
    model.adapter.forward = lambda x, _f=forward, _s=scale: [f * _s for f in _f(x)]
    imgs = []
    for s in range(0, len(texts), 8):
        chunk = texts[s:s+8]
        lay = report_layouts(chunk, seeds=[2_000_000 + s + i for i in range(len(chunk))], size=256, grid=32)
        r = sample(model, [findings_prompt(t) for t in chunk], seed=[s + i for i in range(len(chunk))], guidance_scale=g,
                   layout=lay, layout_guidance=lg, output="images")
        imgs.append(_grey(r.images))
    prob = predict(clf, np.concatenate(imgs))
    sc = score(truth, prob, threshold=THRESHOLD)
    tally = collections.Counter()
    for f, row in zip(truth, prob):
        kind = f[0].kind
        pred = {sd.value for sd in _PAIRED_SIDES if row[LABEL_INDEX[label_name(kind, sd)]] >= THRESHOLD}
        tally["none" if not pred else ("both" if len(pred) == 2 else ("right" if pred == {f[0].side.value} else "wrong"))] += 1
    print(json.dumps({"setting": setting, "side": sc.side_rate(), "n": sum(sc.sided_found.values()), "tally": tally,
                      "recall": {k: round(sc.recall(k), 2) for k in sc.reports}}), flush=True)
