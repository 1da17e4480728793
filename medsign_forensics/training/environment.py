"""The record of where a run happened, read from the machine itself: every artefact says what produced it."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from medsign_forensics import __version__


def hardware(device: str | torch.device = "cpu") -> str:
    """One line naming the compute a run used, e.g. ``2-core CPU (x86_64), 2 torch threads``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), {torch.get_num_threads()} torch threads"


def machine_line(device: str | torch.device = "cpu") -> str:
    """The machine line of a results file: :func:`hardware` with the python and torch versions."""
    return f"{hardware(device)}, python {platform.python_version()}, torch {torch.__version__}"


def load_average() -> str:
    """The 1/5/15-minute load averages as ``a/b/c``: how busy a shared machine was around a measurement."""
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def software() -> dict[str, str]:
    """Versions of this package and of the libraries whose numerics a trained model depends on."""
    versions = {"medsign_forensics": __version__, "torch": torch.__version__}
    for name in ("diffusers", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:  # optional for the trainers that do not use them
            continue
    versions["python"] = platform.python_version()
    return versions


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Machine and software of this process: hardware line, platform, CPU count, torch threads, versions."""
    return {
        "hardware": hardware(device),
        "device": str(torch.device(device)),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "software": software(),
    }
