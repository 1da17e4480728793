"""Probe: does a VAE's latent carry a finding kind's small lesions at all, where a U-Net could find them?

Why: no U-Net's cross-attention pointed at granulomas by inversion (pointing game 0 of 22, with 4 and with 8
latent channels), and a U-Net can only point at what its latent shows. So a small classifier (scikit-learn's
gradient-boosted trees) is trained to tell a lesion's latent cells from the other cells of the same images, from
each cell's 3 x 3 neighbourhood of posterior means plus the cell minus its 5 x 5 mean. Reported on held-out
images (a fifth of those with the kind): the cell AUC (the lesion's cells against 30 random others per image), the
median rank of the best lesion cell among all 1,024 cells (0 = the top cell), and how often the top cell is a
lesion cell: what the pointing game would be for a reader that sees only this latent, cell by cell.

Usage: latent_probe.py RUN [KIND]. RUN: a `medsign base train` run folder with its mask cache (masks.u8) and the
latent cache of its VAE (latents.pt: stage B writes it). KIND: a finding kind (default granuloma).
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

run, kind = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "granuloma"
latents = torch.load(f"{run}/latents.pt", weights_only=True)["latents"].float()
means = latents[:, : latents.shape[1] // 2]  # the cache holds posterior means, then log-variances
meta = json.load(open(f"{run}/masks.json"))
count, kinds, grid = meta["done"], meta["kinds"], meta["grid"]
masks = np.memmap(f"{run}/masks.u8", np.uint8, "r", shape=(count, len(kinds), grid, grid))
lesion = np.asarray(masks[:, kinds.index(kind)]).reshape(count, -1) > 12  # cells at least 5 % inside a lesion

padded = F.pad(means, (1, 1, 1, 1), mode="replicate")
around = [padded[:, :, i : i + grid, j : j + grid] for i in range(3) for j in range(3)]
contrast = means - F.avg_pool2d(F.pad(means, (2, 2, 2, 2), mode="replicate"), 5, 1)
features = torch.cat([*around, contrast], 1).permute(0, 2, 3, 1).reshape(count, grid * grid, -1).numpy()

rng = np.random.default_rng(0)
images = np.flatnonzero(lesion.any(1))
rng.shuffle(images)
train, test = images[: int(0.8 * len(images))], images[int(0.8 * len(images)) :]


def cells(ids: np.ndarray, others: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Each image's lesion cells and ``others`` random other cells, with labels."""
    x, y = [], []
    for i in ids:
        inside, outside = np.flatnonzero(lesion[i]), rng.choice(np.flatnonzero(~lesion[i]), others, replace=False)
        x += [features[i, inside], features[i, outside]]
        y += [np.ones(len(inside)), np.zeros(others)]
    return np.concatenate(x), np.concatenate(y)


x, y = cells(train)
reader = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(x, y)
ranks, hits = [], []
for i in test:
    p = reader.predict_proba(features[i])[:, 1]
    ranks.append(float((p > p[lesion[i]].max()).mean()))
    hits.append(bool(lesion[i][p.argmax()]))
x, y = cells(test)
print(json.dumps({
    "run": run, "kind": kind, "channels": int(means.shape[1]), "train_images": len(train), "test_images": len(test),
    "cell_auc": round(float(roc_auc_score(y, reader.predict_proba(x)[:, 1])), 3),
    "median_rank": round(float(np.median(ranks)), 4), "top_cell_hit": round(float(np.mean(hits)), 3),
}))
