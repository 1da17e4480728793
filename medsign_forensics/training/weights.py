"""Hash-checked, strict-key saving and loading of model files: the one way weights enter or leave the package.

A model folder is a safetensors file plus a JSON manifest that records the architecture config and the file's
SHA-256. Saving writes the weights atomically and returns their hash for the manifest; loading checks the hash
before reading a byte of the tensors, then demands that the tensors fit the module key for key and shape for
shape, so a truncated, swapped or mismatched file fails loudly (ModelError) instead of running with random or
partial weights. Each model family keeps its own manifest fields (the shipped weights' formats stay readable);
what they record is checked here, one way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from medsign_forensics.errors import ModelError
from medsign_forensics.fileio import atomic_path, sha256_file


def save_tensors(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write ``state`` (on the CPU, contiguous, cast to ``dtype`` if given) as safetensors; return its SHA-256.

    Keep ``metadata`` to fixed values: safetensors writes the map in arbitrary order, so a changing value
    (a time, a version) would make equal weights hash differently.
    """
    from safetensors.torch import save_file

    tensors = {
        name: tensor.detach().to("cpu", dtype or tensor.dtype).contiguous() for name, tensor in state.items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None)
        return sha256_file(tmp)


def save_folder(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Have ``write`` fill a temporary folder beside ``folder``, then swap it into place: a model folder is
    either the old one or the complete new one, never a mixture."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def verify_sha256(path: str | Path, expected: object, *, what: str, recorded_in: str) -> str:
    """ModelError unless the file at ``path`` exists and hashes to ``expected``; returns the hash."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"the {what} are missing; restore the file or retrain", path=path)
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            f"the {what} fail their hash check (SHA-256 mismatch: the file hashes to {actual[:16]}..., {recorded_in} "
            f"records {str(expected)[:16]}...); the file was altered or replaced: restore it from the original "
            "training output or reinstall it",
            path=path,
        )
    return actual


def load_tensors(path: str | Path, *, sha256: object, what: str, recorded_in: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose hash is ``sha256`` (see :func:`verify_sha256`)."""
    from safetensors.torch import load_file

    verify_sha256(path, sha256, what=what, recorded_in=recorded_in)
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged header
        raise ModelError(f"the {what} cannot be read ({error})", path=path) from None


def check_state(
    state: Mapping[str, Any] | Collection[str],
    expected: Mapping[str, Any] | Collection[str],
    *,
    what: str,
    target: str,
    path: str | Path | None = None,
) -> None:
    """ModelError unless ``state`` has exactly the names of ``expected`` and, where both hold tensors, the
    same shapes. ``what`` names the weights and ``target`` what they should fit, for the message."""
    names, wanted = set(state), set(expected)
    missing, unexpected = sorted(wanted - names), sorted(names - wanted)
    reshaped = []
    if isinstance(state, Mapping) and isinstance(expected, Mapping):
        reshaped = sorted(
            name
            for name in names & wanted
            if hasattr(state[name], "shape") and tuple(state[name].shape) != tuple(expected[name].shape)
        )
    parts = [
        f"{len(found)} {kind} (e.g. {found[:2]})"
        for kind, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if found
    ]
    if parts:
        raise ModelError(
            f"the {what} do not fit {target}: {', '.join(parts)}; they belong to another architecture or model",
            path=path,
        )


def load_state(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str, target: str, path: str | Path
) -> None:
    """Load ``state`` into ``module`` after :func:`check_state` (values are cast to the module's dtypes)."""
    check_state(state, module.state_dict(), what=what, target=target, path=path)
    module.load_state_dict(dict(state), strict=True)


def read_json_manifest(path: str | Path, *, what: str, hint: str) -> dict[str, Any]:
    """The JSON object at ``path``; ModelError when it is absent (``hint`` says what to do), unreadable or
    not an object."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"the {what} is missing; {hint}", path=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"the {what} cannot be read ({error}); restore it or re-save the model", path=path) from None
    if not isinstance(data, dict):
        raise ModelError(f"the {what} is not a JSON object; restore it or re-save the model", path=path)
    return data
