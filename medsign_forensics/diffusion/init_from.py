"""Stage B continued from an exported model (``medsign base train --stage unet --init-from DIR``).

A fine-tune (e.g. grounding the shipped mini-cxr's cross-attention) starts from the text encoder and U-Net of a
model folder instead of the config's random weights, and keeps that folder's VAE (frozen, as in every stage B)
and tokenizer. The folder is loaded with :func:`~medsign_forensics.diffusion.loader.load_model`, so its weights
are hash-checked and read key for key; the config must describe the same architecture (strict loading refuses
anything else).

On the run's first invocation the VAE goes to ``OUT/vae/final`` and the tokenizer files to ``OUT/tokenizer``,
and ``OUT/init.json`` records the folder and its combined weights SHA-256. Later invocations (``--resume``) need
no ``--init-from``; if one is given it must be the same weights. Until stage B's first checkpoint exists, a
resumed run re-reads the recorded folder and refuses it if its weights changed. The record goes into the
exported model card.

A run that trained its own stage A first (a new VAE, e.g. more latent channels) keeps that VAE: it takes only
the text encoder, U-Net, layout adapter and tokenizer, and since its latent space is new, the U-Net's first and
last convolutions start from the config's initial weights (``own_vae`` in the record).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medsign_forensics.errors import InputError, ModelError
from medsign_forensics.fileio import write_text
from medsign_forensics.training.weights import save_folder

INIT_FILE = "init.json"
_OWN_PARTS = ("tokenizer", "unet/checkpoint.pt")  # what a run from scratch makes in stage B


@dataclass(frozen=True)
class InitRecord:
    """The model a run started from: its folder, name and combined weights SHA-256 (as provenance records it)."""

    path: str
    name: str
    weights_sha256: str
    own_vae: bool = False  # the run trained its own VAE and kept it


class InitFrom:
    """The initial model of a run; :meth:`modules` gives its text encoder, U-Net and layout adapter (None when it
    has none), loaded once."""

    def __init__(self, record: InitRecord, model: Any | None = None) -> None:
        self.record = record
        self._model = model

    def modules(self) -> tuple[Any, Any, Any]:
        if self._model is None:
            self._model = _load_checked(self.record)
        return self._model.text_encoder, self._model.unet, self._model.adapter


def prepare_init(out: Path, init_from: str | Path | None) -> InitFrom | None:
    """The run's initial model, or None when it trains from scratch (see the module docstring)."""
    record_path = out / INIT_FILE
    recorded = _read_record(record_path) if record_path.is_file() else None
    if init_from is None:
        return None if recorded is None else InitFrom(recorded)
    from medsign_forensics.diffusion.loader import load_model

    model = load_model(init_from)
    own_vae = recorded.own_vae if recorded is not None else _trained_own_vae(out)
    record = InitRecord(path=str(model.path), name=model.name, weights_sha256=model.weights_sha256, own_vae=own_vae)
    if recorded is not None:
        if recorded.weights_sha256 != record.weights_sha256:
            raise InputError(
                f"this run started from {recorded.path} (weights {recorded.weights_sha256[:12]}…), not from these "
                "weights; resume without --init-from or start a new --out",
                path=Path(init_from),
            )
        return InitFrom(recorded, model)
    own = [name for name in _OWN_PARTS if (out / name).exists()]
    if own:
        raise InputError(
            f"this run already has its own {', '.join(own)}; --init-from starts a new run, so choose a new --out",
            path=out,
        )
    if own_vae and not (out / "vae" / "final" / "config.json").is_file():
        raise InputError("this run's own stage A has no final VAE yet; finish --stage vae before --init-from", path=out)

    def write_vae(tmp: Path) -> None:
        model.vae.save_pretrained(str(tmp), safe_serialization=True)

    def copy_tokenizer(tmp: Path) -> None:
        shutil.copytree(model.path / "tokenizer", tmp, dirs_exist_ok=True)

    if not own_vae:
        save_folder(out / "vae" / "final", write_vae)
    save_folder(out / "tokenizer", copy_tokenizer)
    write_text(record_path, json.dumps(asdict(record), indent=2))
    return InitFrom(record, model)


def _trained_own_vae(out: Path) -> bool:
    """Whether stage A ran in ``out`` (a checkpoint or a final VAE stage A wrote, not one an init copied)."""
    return (out / "vae" / "checkpoint.pt").is_file() or (out / "vae" / "final" / "trained_steps.json").is_file()


def _read_record(path: Path) -> InitRecord:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return InitRecord(
            path=str(data["path"]), name=str(data["name"]), weights_sha256=str(data["weights_sha256"]),
            own_vae=bool(data.get("own_vae", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"the run's record of its initial model is unreadable ({error})", path=path) from None


def _load_checked(record: InitRecord) -> Any:
    from medsign_forensics.diffusion.loader import load_model

    model = load_model(record.path)
    if model.weights_sha256 != record.weights_sha256:
        raise ModelError(
            f"the model this run started from has changed since (weights {model.weights_sha256[:12]}…, recorded "
            f"{record.weights_sha256[:12]}…); its first steps cannot be redone",
            path=Path(record.path),
        )
    return model
