from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.provenance.atomic import write_atomic


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
