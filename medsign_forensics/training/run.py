"""The run folder of a resumable training run: one resume policy and one config check for every trainer.

Long runs on two CPU cores are made in chunks, so a folder either starts a run or continues the one it holds,
never mixes two: a run is recognised by its marker file (its checkpoint or config), a second start in the same
folder is refused unless the caller asks to resume, and a resume with settings that would change what was
already trained is refused, naming the fields that differ.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from medsign_forensics.errors import InputError
from medsign_forensics.training.log import JsonlLog

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"


class RunFolder:
    """``path`` holding (or about to hold) one run, recognised by the file ``marker``.

    ``resume`` True continues the run the folder holds (there must be one), False starts one (there must be
    none), None continues a run if there is one and starts one otherwise. :attr:`resuming` says which.
    """

    def __init__(
        self, path: str | Path, *, resume: bool | None, marker: str = CHECKPOINT_FILE, log: str = LOG_FILE
    ) -> None:
        self.path = Path(path)
        self.marker = self.path / marker
        started = self.marker.is_file()
        if resume is False and started:
            raise InputError(
                "this folder already holds a training run; pass --resume to continue it or choose a new --out",
                path=self.path,
            )
        if resume is True and not started:
            raise InputError(
                f"--resume was given but there is no training run to resume here (no {marker}); start without --resume",
                path=self.path,
            )
        self.resuming = started
        self.path.mkdir(parents=True, exist_ok=True)
        self.log = JsonlLog(self.path / log)

    def check_config(
        self, saved: Mapping[str, Any], current: Mapping[str, Any], *, resumable: Collection[str] = ()
    ) -> None:
        """InputError unless ``current`` equals ``saved`` in every field outside ``resumable``."""
        changed = sorted(
            name
            for name in set(saved) | set(current)
            if name not in resumable and saved.get(name) != current.get(name)
        )
        if changed:
            raise InputError(
                f"the config differs from the one this run started with ({', '.join(changed)}): different settings "
                "cannot continue it; resume with the same ones or use a new --out",
                path=self.marker,
            )

    def restart_log(self, step: int, *, where: Mapping[str, Any] | None = None) -> None:
        """Make the log end at ``step``, the checkpoint this call continues from (a fresh run: empty)."""
        if self.resuming or where is not None:
            self.log.trim(step, where=where)
        else:
            self.log.reset()
