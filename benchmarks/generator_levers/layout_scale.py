"""Probe: partial layout guidance. The unconditional half of classifier-free guidance gets (1 - LAMBDA) of the
layout adapter's features instead of all (LAMBDA 0, the default) or none (LAMBDA 1, `--layout-guidance`), so that
guidance amplifies LAMBDA of the layout. Still two U-Net passes per step.

Usage: layout_scale.py LAMBDA GENERATOR_EVAL_ARGS... (runs benchmarks/generator_eval.py with --layout-guidance
and the partial layout in place of medsign_forensics.diffusion.layout.layout_conditioning)."""
import runpy
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from medsign_forensics.diffusion import sampling

LAMBDA = float(sys.argv[1])


@contextmanager
def partial_layout(unet, adapter, layout, *, guided=False):
    parameter = next(adapter.parameters())
    with torch.no_grad():
        features = adapter(layout.to(parameter.device, parameter.dtype))

    def add_features(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        repeat = sample.shape[0] // layout.shape[0]
        residuals = [feature.repeat(repeat, 1, 1, 1).to(sample.dtype) for feature in features]
        if guided and repeat == 2:
            n = len(layout)
            residuals = [torch.cat([(1 - LAMBDA) * r[:n], r[n:]]) for r in residuals]
        return args, {**kwargs, "down_intrablock_additional_residuals": residuals}

    handle = unet.register_forward_pre_hook(add_features, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


sampling.layout_conditioning = partial_layout
script = Path(__file__).resolve().parents[1] / "generator_eval.py"
sys.argv = [str(script), "--layout-guidance", *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
