"""Write a file so that readers see either the old content or the whole new content, never a part."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from medsign_forensics.errors import InputError


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> Path:
    """Write ``data`` to a temporary file beside ``path`` with ``mode``, flush it to disk, then rename it.

    The temporary file is created with ``mode`` from the start (not chmod-ed later), so a private key is
    never readable by others, not even for an instant. With ``overwrite=False`` the file is published with a
    hard link, which fails atomically if ``path`` exists, so a concurrent writer can never be overwritten.
    """
    path = Path(path)
    exists = "file already exists; refusing to overwrite it (move it away or choose another path)"
    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} does not exist; create it first", path=path)
    if not overwrite and path.exists():
        raise InputError(exists, path=path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    except FileExistsError:
        raise InputError(exists, path=path) from None
    except OSError as error:
        raise InputError(f"cannot write the file: {error.strerror or error}", path=path) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where folders cannot be opened."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
