"""Design probe for the stage-1 watermark pair: how fast does each variant start to learn on this CPU?

Each arm trains an encoder/extractor pair from scratch on 64x64 crops of phantoms (batch 16, AdamW, no attack,
8-bit storage with a straight-through rounding) and prints the bit accuracy averaged over each 100 steps.
Arms:

* ``--norm``: the extractor's normalisation: ``batch`` (shipped), ``group`` (8 groups), ``none``.
* ``--encoder``: ``tiled`` (shipped: learned per-bit patterns tiled over the image), ``fixed-tiled`` (the same
  patterns frozen at their random initialisation: only the extractor learns), ``channels`` (HiDDeN's original
  injection: the key as constant feature channels mixed with image features by one convolution).

Run: ``python benchmarks/extractor_design.py --norm batch --encoder tiled --steps 2000``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsign_forensics.attacks.storage import Requantize
from medsign_forensics.phantom.classifier_data import random_findings
from medsign_forensics.phantom.renderer import render_study
from medsign_forensics.watermark import hidden
from medsign_forensics.watermark.hidden import HiddenConfig, HiddenEncoder, HiddenExtractor


class ChannelEncoder(nn.Module):
    """HiDDeN's original key injection: image features, key as constant channels, one mixing convolution."""

    def __init__(self, config: HiddenConfig, channels: int = 32) -> None:
        super().__init__()
        self.config = config
        block = hidden._bn_block
        self.features = nn.Sequential(block(1, channels, stride=2), block(channels, channels))
        self.mix = block(channels + config.bits + 1, channels)
        self.to_delta = nn.Conv2d(channels, 1, 1)

    def forward(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        feats = self.features(images)
        signs = (2 * keys - 1)[:, :, None, None].expand(-1, -1, *feats.shape[2:])
        small = F.interpolate(images, size=feats.shape[2:], mode="bilinear", antialias=True)
        delta = torch.tanh(self.to_delta(self.mix(torch.cat([feats, signs, small], 1))))
        delta = F.interpolate(delta, size=images.shape[2:], mode="bilinear")
        return torch.clamp(images + self.config.strength * delta, 0, 1)


def extractor_with_norm(config: HiddenConfig, norm: str) -> HiddenExtractor:
    extractor = HiddenExtractor(config)
    if norm == "batch":
        return extractor
    for module in extractor.features:
        conv, old = module[0], module[1]
        module[0] = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1, bias=norm == "none")
        module[1] = nn.GroupNorm(8, old.num_features) if norm == "group" else nn.Identity()
    return extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--norm", choices=["batch", "group", "none"], default="batch")
    parser.add_argument("--encoder", choices=["tiled", "fixed-tiled", "channels"], default="tiled")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--phantoms", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(np.stack([
        render_study(random_findings(np.random.default_rng(i)), seed=i, size=256).image for i in range(args.phantoms)
    ]))[:, None]
    config = HiddenConfig(strength=args.strength)
    encoder = ChannelEncoder(config) if args.encoder == "channels" else HiddenEncoder(config)
    if args.encoder == "fixed-tiled":
        encoder.patterns.requires_grad_(False)
    extractor = extractor_with_norm(config, args.norm)
    params = [p for p in list(encoder.parameters()) + list(extractor.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    accuracies: list[float] = []
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = images[torch.from_numpy(rng.integers(0, len(images), 16))]
        top, left = rng.integers(0, 128, 2)
        batch = F.interpolate(batch[:, :, top:top + 128, left:left + 128], size=(64, 64), mode="bilinear",
                              antialias=True)
        keys = torch.from_numpy(rng.integers(0, 2, (16, config.bits))).float()
        marked = encoder(batch, keys)
        marked = Requantize(8).differentiable(marked)  # stored as 8 bits, straight-through
        logits = extractor.raw_logits(marked)
        loss = F.binary_cross_entropy_with_logits(logits, keys)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracies.append(((logits > 0).float() == keys).float().mean().item())
        if step % 100 == 0:
            print(json.dumps({"norm": args.norm, "encoder": args.encoder, "step": step,
                              "bit_accuracy": round(float(np.mean(accuracies[-100:])), 4),
                              "seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
