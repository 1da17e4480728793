"""Resumable checkpoints: everything a trainer needs to continue, with the state of every random generator.

A checkpoint is written to a temporary name and renamed into place, so a crash while saving leaves the
previous checkpoint intact. It carries the global torch generator (and CUDA's, when in use), the named torch
and numpy generators the trainer draws its data from, and the trainer's own payload, so a run resumed from it
draws exactly the numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsign_forensics.errors import ModelError
from medsign_forensics.fileio import atomic_path

RNG_KEY = "rng"
_NO_GENERATORS: Mapping[str, Any] = {}


def capture_rng(
    *,
    generators: Mapping[str, torch.Generator] = _NO_GENERATORS,
    numpy_rngs: Mapping[str, np.random.Generator] = _NO_GENERATORS,
) -> dict[str, Any]:
    """The state of the global torch (and CUDA) generators and of the named generators given."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "generators": {name: generator.get_state() for name, generator in generators.items()},
        "numpy": {name: rng.bit_generator.state for name, rng in numpy_rngs.items()},
    }


def restore_rng(
    state: Mapping[str, Any],
    *,
    generators: Mapping[str, torch.Generator] = _NO_GENERATORS,
    numpy_rngs: Mapping[str, np.random.Generator] = _NO_GENERATORS,
) -> None:
    """Put every generator back where :func:`capture_rng` found it; ModelError if a named one was not saved."""
    absent = sorted(set(generators) - set(state["generators"])) + sorted(set(numpy_rngs) - set(state["numpy"]))
    if absent:
        raise ModelError(f"the checkpoint holds no state for the random generator(s) {', '.join(absent)}")
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name].cpu())
    for name, rng in numpy_rngs.items():
        rng.bit_generator.state = state["numpy"][name]


def save_checkpoint(
    path: str | Path,
    payload: Mapping[str, Any],
    *,
    generators: Mapping[str, torch.Generator] = _NO_GENERATORS,
    numpy_rngs: Mapping[str, np.random.Generator] = _NO_GENERATORS,
) -> None:
    """Atomically write ``payload`` plus the generators' states and the time of saving to ``path``."""
    state = {
        **payload,
        RNG_KEY: capture_rng(generators=generators, numpy_rngs=numpy_rngs),
        "saved_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (tensors only, no pickled code); ModelError for a truncated or foreign file.

    Checkpoints written before this module kept their generator states under their trainer's own keys; they
    are read into the same ``rng`` layout, so a run started with an older version still resumes.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ModelError(f"the checkpoint cannot be read ({error}); delete it to start afresh", path=path) from None
    if not isinstance(state, dict):
        raise ModelError("the checkpoint does not hold a state dictionary; delete it to start afresh", path=path)
    if RNG_KEY not in state:
        state[RNG_KEY] = _legacy_rng(state)
    return state


def _legacy_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``rng`` entry for a checkpoint of the four trainers' earlier layouts (one data generator each)."""
    return {
        "torch": state.get("torch_rng", torch.get_rng_state()),
        "cuda": state.get("cuda_rng") or [],
        "generators": {"data": state["generator"]} if "generator" in state else {},
        "numpy": {"data": state["numpy_rng"]} if "numpy_rng" in state else {},
    }
