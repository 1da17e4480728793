"""The JSONL training log: one JSON object per line, each with the ``step`` it was written at.

A resumed run restarts from its last checkpoint, so lines written after that checkpoint describe steps that
will be run again; :meth:`JsonlLog.trim` drops them so that every step appears once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsign_forensics.errors import InputError
from medsign_forensics.fileio import write_text


class JsonlLog:
    """Append-only JSON lines at ``path`` (keys sorted, so equal records give equal lines)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"the training log is not JSON lines ({error}); move it away", path=self.path) from None

    def trim(self, last_step: int, *, where: Mapping[str, Any] | None = None) -> None:
        """Drop the lines after ``last_step`` (only those matching every ``where`` item, when given)."""
        if not self.path.is_file():
            return

        def stale(entry: dict[str, Any]) -> bool:
            matches = all(entry.get(key) == value for key, value in (where or {}).items())
            return matches and int(entry.get("step", 0)) > last_step

        kept = [entry for entry in self.read() if not stale(entry)]
        write_text(self.path, "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in kept))

    def reset(self) -> None:
        """Forget the lines of a run that never reached a checkpoint."""
        self.path.unlink(missing_ok=True)
