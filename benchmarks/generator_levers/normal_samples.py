"""Picture: what models draw for normal reports, beside the reports' phantoms.

Usage: normal_samples.py OUT.png MODEL [MODEL ...]; MODEL is a model folder with a layout adapter. Takes the first
6 normal reports among the 200 held-out ones (findings prompts, seeds and layouts as generator_eval.py) and writes
one row of phantoms, then one row per model, each image 256 x 256 (the saved grid is halved)."""
import sys
import numpy as np, torch
from PIL import Image
from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.layout import report_layouts
from medsign_forensics.evaluate.generator import _grey, render_phantoms
from medsign_forensics.reports.prompt import findings_prompt
from common import normal_texts
torch.set_num_threads(2)
texts = normal_texts(6)
rows = [render_phantoms(texts, seed=0, size=256)]
for folder in sys.argv[2:]:
    model = load_model(folder)
    lay = report_layouts(texts, seeds=[2_000_000 + i for i in range(len(texts))], size=256, grid=32)
    r = sample(model, [findings_prompt(t) for t in texts], seed=list(range(len(texts))), layout=lay, output="images")
    rows.append(_grey(r.images))
grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
picture = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
picture.resize((picture.width // 2, picture.height // 2), Image.LANCZOS).save(sys.argv[1])
