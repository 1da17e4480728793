"""Probe: sampling-time prompt = the report's sentences that assert a present finding (else a normal impression)."""
import sys, json
import torch
from medsign_forensics.diffusion import load_model
from medsign_forensics.evaluate.generator import generate_images, score, present_findings, THRESHOLD
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict
from medsign_forensics.reports import parse_report
from common import held_out_texts, summary
from medsign_forensics.diffusion.data import _SENTENCE_END
torch.set_num_threads(2)
model = load_model(None if sys.argv[1] == "-" else sys.argv[1])
normal = sys.argv[2] if len(sys.argv) > 2 else "No acute cardiopulmonary abnormality."
g = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
clf = load_classifier(DEFAULT_CLASSIFIER_DIR)
texts = held_out_texts()
findings = [present_findings(t) for t in texts]
def prompt(text):
    keep = [s for s in _SENTENCE_END.split(text) if s and any(f.present for f in parse_report(s))]
    return " ".join(keep) if keep else normal
prompts = [prompt(t) for t in texts]
print(prompts[:6])
imgs, _ = generate_images(model, prompts, seed=0, steps=25, guidance=g, batch=8)
s = score(findings, predict(clf, imgs), threshold=THRESHOLD)
print(json.dumps({"setting": f"prompt filter g={g} normal={normal!r}", **summary(s)}), flush=True)
