from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.fileio import (
    OPEN_MODE,
    PRIVATE_MODE,
    atomic_path,
    sha256_file,
    write_atomic,
    write_bytes,
)


def test_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    write_atomic(path, b"first")
    write_atomic(path, b"second", mode=0o600)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_no_overwrite_keeps_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_atomic(path, b"original", overwrite=False)
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_atomic(path, b"replacement", overwrite=False)
    assert path.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        write_atomic(tmp_path / "absent" / "file", b"x")


def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_creates_ordinary_files_unless_asked_for_private_ones(tmp_path: Path) -> None:
    write_bytes(tmp_path / "private", b"x", mode=PRIVATE_MODE)
    write_bytes(tmp_path / "ordinary", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == PRIVATE_MODE
    assert stat.S_IMODE((tmp_path / "ordinary").stat().st_mode) == OPEN_MODE & ~umask


def test_atomic_path_without_overwrite_refuses_an_existing_target(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        with atomic_path(path, overwrite=False, durable=True) as tmp:
            tmp.write_bytes(b"replacement")
    assert path.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_atomic_path_creates_missing_folders(tmp_path: Path) -> None:
    write_bytes(tmp_path / "a" / "b" / "file", b"x")
    assert (tmp_path / "a" / "b" / "file").read_bytes() == b"x"


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several 1 MiB chunks and a partial one
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)


def test_atomic_path_keeps_its_mode_when_a_library_replaces_the_temporary_file(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    with atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == OPEN_MODE & ~umask
