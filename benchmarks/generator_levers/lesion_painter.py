"""Probe: a layout-gated painter after the decoder draws the small lesions the 4-channel VAE cannot.

Why: the shipped decoder cannot draw a 3-pixel granuloma from any latent near the encoder's (`latent_fit.py`), and
every VAE that can changed the latent, which 0.2.0's U-Net could not relearn on two cores. But the generator
already knows where each finding goes, cell by cell: the layout the adapter reads is the renderer's exact
placement on the 32 x 32 grid. So a small convolutional net may draw what the decoder blurs, reading the decoded
image and the layout, and writing only inside the cells (grown by GROW pixels) the layout gives to the painted
kinds (granuloma and nodule). A normal report's layout is empty, so its image is left untouched, bit for bit.

Trained on the training renders' VAE reconstructions (encode, decode with the shipped VAE; cached in
/work/runs/fit/painter_recon.u8) and their own layouts (`masks.u8`), with 48-px crops around the painted kinds'
lesions: L1 + W x the lesion phase's lesion and peaks terms (`vae_lesions.lesion_terms`).

Usage: lesion_painter.py RUN STEPS [W [THREADS]]. RUN: a `medsign base train` run folder of the default data
settings with its render, mask and lesion caches (renders.u8, masks.u8, lesions.u16). Scores, before and after:
(a) the reconstructions of the 200 held-out phantoms painted from their own layouts (the ceiling), (b) 0.2.0's
samples of the held-out reports with a granuloma or nodule, painted from the layouts they were sampled with
(seeds as `generator_eval.py`). Saves the painter to /work/runs/fit/painter.pt.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsign_forensics.diffusion import load_model, sample
from medsign_forensics.diffusion.layout import KINDS, report_layouts
from medsign_forensics.diffusion.vae_lesions import lesion_terms, lesion_weights
from medsign_forensics.evaluate.generator import (LAYOUT_SEED_OFFSET, THRESHOLD, _grey, present_findings,
                                                  reconstruct, render_phantoms, score)
from medsign_forensics.phantom.classifier import DEFAULT_CLASSIFIER_DIR, load_classifier, predict
from medsign_forensics.reports.findings import FindingKind
from medsign_forensics.reports.prompt import findings_prompt

from common import held_out_texts, summary

run, steps = Path(sys.argv[1]), int(sys.argv[2])
weight = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
torch.manual_seed(0)
PAINTED = [KINDS.index(FindingKind.GRANULOMA), KINDS.index(FindingKind.NODULE)]
GROW, CROP, SIZE = 4, 48, 256
out = Path("/work/runs/fit")


class Painter(torch.nn.Module):
    """Image + layout planes (upsampled to pixels) -> a residual, written only inside the painted kinds' cells."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 1 + len(KINDS)
        for dilation in (1, 2, 4, 1):
            layers += [torch.nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), torch.nn.SiLU()]
            channels = width
        self.body = torch.nn.Sequential(*layers, torch.nn.Conv2d(width, 1, 3, padding=1))
        torch.nn.init.zeros_(self.body[-1].weight)
        torch.nn.init.zeros_(self.body[-1].bias)

    def forward(self, image: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
        """image (B, 1, H, W) in [0, 1]; planes (B, kinds, H, W) in [0, 1], nearest-upsampled from the grid."""
        gate = F.max_pool2d((planes[:, PAINTED].amax(1, keepdim=True) > 0).float(), 2 * GROW + 1, 1, GROW)
        return (image + gate * self.body(torch.cat([image, planes], 1))).clamp(0, 1)


def upsample(layout: torch.Tensor) -> torch.Tensor:
    return F.interpolate(layout, size=(SIZE, SIZE), mode="nearest")


model = load_model(None)
classifier = load_classifier(DEFAULT_CLASSIFIER_DIR)
count = 5600
renders = np.memmap(run / "renders.u8", np.uint8, "r", shape=(count, SIZE, SIZE))
masks = np.memmap(run / "masks.u8", np.uint8, "r", shape=(count, len(KINDS), 32, 32))
lesions = np.memmap(run / "lesions.u16", np.uint16, "r", shape=(count, SIZE, SIZE))
rows = np.flatnonzero(masks[:, PAINTED].reshape(count, -1).max(1) > 0)
recon_path = out / "painter_recon.u8"
if not recon_path.exists():
    began = time.time()
    recon = np.concatenate([reconstruct(model, renders[rows[i : i + 16]].astype(np.float32) / 255, batch=16)
                            for i in range(0, len(rows), 16)])
    (np.round(recon * 255).astype(np.uint8)).tofile(recon_path)
    print(json.dumps({"reconstructed": len(rows), "s": round(time.time() - began, 1)}), flush=True)
recon = np.fromfile(recon_path, np.uint8).reshape(len(rows), SIZE, SIZE)
painted_bits = sum(1 << p for p in PAINTED)

# held-out sets for scoring
texts = held_out_texts()
findings = [present_findings(t) for t in texts]
phantoms = render_phantoms(texts, seed=0, size=SIZE)
own_layouts = report_layouts(texts, seeds=list(range(len(texts))), size=SIZE, grid=32)
held_recon = reconstruct(model, phantoms, batch=16)
small = [i for i, f in enumerate(findings) if {x.kind for x in f} & {FindingKind.GRANULOMA, FindingKind.NODULE}]
sampled_layouts = report_layouts([texts[i] for i in small], seeds=[LAYOUT_SEED_OFFSET + i for i in small], size=SIZE, grid=32)
samples = []
for s in range(0, len(small), 8):
    chunk = small[s : s + 8]
    r = sample(model, [findings_prompt(texts[i]) for i in chunk], seed=chunk, layout=sampled_layouts[s : s + 8],
               output="images")
    samples.append(_grey(r.images))
samples = np.concatenate(samples)
painter = Painter()


@torch.no_grad()
def evaluate(tag: str) -> None:
    painter.eval()
    ceiling = painter(torch.from_numpy(held_recon)[:, None], upsample(own_layouts))[:, 0].numpy()
    drawn = painter(torch.from_numpy(samples)[:, None], upsample(sampled_layouts))[:, 0].numpy()
    a = score(findings, predict(classifier, ceiling), threshold=THRESHOLD)
    b = score([findings[i] for i in small], predict(classifier, drawn), threshold=THRESHOLD)
    print(json.dumps({"tag": tag, "reconstructions": {**summary(a), "nodule": a.recall("nodule")},
                      "samples": {k: round(b.recall(k), 3) for k in ("granuloma", "nodule")},
                      "samples_n": {k: b.reports[k] for k in ("granuloma", "nodule")},
                      "changed_pixels_normal": float(np.abs(ceiling - held_recon)[[not f for f in findings]].max())}),
          flush=True)
    painter.train()


def batch(generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, ...]:
    images, targets, planes, weights = [], [], [], []
    for _ in range(size):
        j = int(torch.randint(0, len(rows), (1,), generator=generator))
        bits = lesions[rows[j]]
        points = np.argwhere(bits & painted_bits)
        if len(points) == 0:
            points = np.array([[SIZE // 2, SIZE // 2]])
        cy, cx = points[int(torch.randint(0, len(points), (1,), generator=generator))]
        dy, dx = torch.randint(-CROP // 3, CROP // 3 + 1, (2,), generator=generator).tolist()
        y = int(np.clip(cy - CROP // 2 + dy, 0, SIZE - CROP))
        x = int(np.clip(cx - CROP // 2 + dx, 0, SIZE - CROP))
        layout = upsample(torch.from_numpy(masks[rows[j]].astype(np.float32) / 255)[None])[0]
        images.append(recon[j, y : y + CROP, x : x + CROP])
        targets.append(renders[rows[j], y : y + CROP, x : x + CROP])
        planes.append(layout[:, y : y + CROP, x : x + CROP])
        weights.append(lesion_weights(bits)[y : y + CROP, x : x + CROP])
    return stacked(images) / 255, stacked(targets) / 255, torch.stack(planes), stacked(weights)


def stacked(arrays: list) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.float32))[:, None]


evaluate("start (no painting)")
optimizer = torch.optim.AdamW(painter.parameters(), lr=1e-3, weight_decay=0.0)
generator = torch.Generator().manual_seed(0)
began = time.time()
for step in range(1, steps + 1):
    image, target, planes, weights = batch(generator)
    error = (painter(image, planes) - target).abs()
    lesion, peaks = lesion_terms(error, weights)
    loss = error.mean() + weight * (lesion + peaks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if step % 100 == 0:
        print(json.dumps({"step": step, "l1": round(error.mean().item(), 5), "lesion": round(lesion.item(), 4),
                          "peaks": round(peaks.item(), 4), "s": round(time.time() - began, 1)}), flush=True)
    if step % max(1, steps // 4) == 0 or step == steps:
        evaluate(f"step {step}")
        torch.save(painter.state_dict(), out / "painter.pt")
