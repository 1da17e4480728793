"""One exception hierarchy for the whole toolkit.

Every error carries a message that says what was wrong and what to do, and the process exit code the CLI
uses for it. The CLI catches :class:`MedsignError` in one place and prints the message as one line; anything
else is a bug and is allowed to show a traceback.

Exit codes (documented in the README):

====  ==========================================================
0     success
1     a check ran and found a problem (verify/scan/keys check verdicts; see those commands)
2     bad input: a file, argument or report the user gave cannot be used
3     a dataset or report corpus is missing or corrupt
4     a model or weights file is missing, mismatched or fails its hash check
5     the key registry or an issuer key cannot be used
6     a DICOM object cannot be written or read as required
====  ==========================================================
"""

from __future__ import annotations

from pathlib import Path


class MedsignError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.path}: {message}" if self.path else message


class InputError(MedsignError, ValueError):
    """A file, argument or report given by the user cannot be used."""

    exit_code = 2


class ReportError(InputError):
    """A report is empty, undecodable or otherwise unusable."""


class ImageReadError(InputError):
    """A suspect image file cannot be read safely."""


class ClusterError(InputError):
    """The Dask cluster cannot be used: dask is not installed, the scheduler cannot be reached or went away,
    or the workers cannot run the toolkit. Exit code 2, as for a PACS that cannot be used."""


class DatasetError(MedsignError):
    """A dataset or report corpus is unknown, missing or corrupt."""

    exit_code = 3


class ModelError(MedsignError):
    """A model folder or weights file is missing, mismatched or fails its hash check."""

    exit_code = 4


class RegistryError(MedsignError):
    """The key registry or an issuer key cannot be used."""

    exit_code = 5


class DicomError(MedsignError):
    """A DICOM object cannot be written or read as required."""

    exit_code = 6
