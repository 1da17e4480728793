"""Probe: partial layout guidance. The unconditional half of classifier-free guidance gets (1 - LAMBDA) of the
layout adapter's features instead of all (LAMBDA 0, the default) or none (LAMBDA 1, `--layout-guidance`), so that
guidance amplifies LAMBDA of the layout. Still two U-Net passes per step.

Usage: layout_scale.py LAMBDA GENERATOR_EVAL_ARGS... (runs benchmarks/generator_eval.py with --layout-guidance
and the partial layout in place of medsign_forensics.diffusion.layout.layout_conditioning)."""
import runpy
import sys
from pathlib import Path

import torch

from medsign_forensics.diffusion import layout, sampling

LAMBDA = float(sys.argv[1])


def partial_layout(unet, adapter, given, *, guided=0.0):
    return layout.layout_conditioning(unet, adapter, given, guided=LAMBDA * torch.as_tensor(guided))


sampling.layout_conditioning = partial_layout
script = Path(__file__).resolve().parents[1] / "generator_eval.py"
sys.argv = [str(script), "--layout-guidance", "all", *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
