"""Probe: on which of the U-Net's attention grids does a finding word's map find its lesion?

The localization map averages every cross-attention layer, upsampled to pixels (MedSign eq. 1); its pointing
game asks for the peak pixel inside the lesion, which a 3-pixel granuloma rarely allows at any map resolution.
This asks the coarser question per grid (32 x 32, 16 x 16, 8 x 8 cells for mini-cxr): with each layer's map of
the kind's words (summed over their tokens, each layer normalised, layers of a grid averaged), is the top cell one
the lesion touches ("hit"), and what is the median rank of the best lesion cell among all cells (0 = the top)?
Inversion exactly as `benchmarks/localization_eval.py` (the first N held-out reports with a drawn finding,
phantom seed i, the default timesteps, no layout).

Usage: attention_grids.py MODEL [N]. MODEL: a model folder, or - for the shipped mini-cxr. Torch threads: $THREADS (default 2).
"""
import json
import os
import sys
from collections import defaultdict

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsign_forensics.diffusion import load_model  # noqa: E402
from medsign_forensics.diffusion.configs import DataConfig  # noqa: E402
from medsign_forensics.evaluate.localization import has_present_finding, kind_masks  # noqa: E402
from medsign_forensics.localization.inversion import capture_image  # noqa: E402
from medsign_forensics.phantom import render_report  # noqa: E402
from medsign_forensics.reports import load_reports, split_reports  # noqa: E402
from medsign_forensics.reports.prompt import prompt_function  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
model = load_model(None if sys.argv[1] == "-" else sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
data = DataConfig()
_, test = split_reports(load_reports(data.corpus), test_fraction=data.test_fraction, seed=data.split_seed)
reports = [report for report in test if has_present_finding(report)][:count]
prompt = prompt_function(model.prompt_form)
found: dict[tuple[str, int], list[tuple[bool, float]]] = defaultdict(list)
for index, report in enumerate(reports):
    study, _ = render_report(report.text, seed=index, size=256)
    attention = capture_image(model.pipeline, study.image, prompt(report.text), seed=index)
    for kind, mask in kind_masks(study).items():
        tokens = sorted({t for w in attention.words if kind in w.word.kinds for t in w.positions})
        if not tokens:
            continue
        per_grid = defaultdict(list)
        for layer in attention.captured.layers.values():
            word_map = layer.sums[0, tokens].sum(0)
            per_grid[int(word_map.shape[-1])].append(word_map / word_map.sum())
        for grid, maps in per_grid.items():
            mean = torch.stack(maps).mean(0).numpy()
            cell = mask.shape[0] // grid
            touched = mask.reshape(grid, cell, grid, cell).any((1, 3))
            found[(kind.value, grid)].append(
                (bool(touched.flat[mean.argmax()]), float((mean > mean[touched].max()).mean()))
            )
rows = {f"{kind} {grid}x{grid}": {"n": len(v), "hit": round(float(np.mean([h for h, _ in v])), 3),
                                  "median_rank": round(float(np.median([r for _, r in v])), 3)}
        for (kind, grid), v in sorted(found.items())}
print(json.dumps({"model": sys.argv[1], "reports": len(reports), "grids": rows}, indent=1))
