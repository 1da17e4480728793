"""Hash-checked, strict-key saving and loading of model files."""

from __future__ import annotations

import json

import pytest
import torch

from medsign_forensics.errors import ModelError
from medsign_forensics.fileio import sha256_file
from medsign_forensics.training.weights import (
    check_state,
    load_state,
    load_tensors,
    read_json_manifest,
    save_folder,
    save_tensors,
)


def test_round_trip_with_hash_and_dtype(tmp_path) -> None:
    module = torch.nn.Linear(3, 2)
    digest = save_tensors(tmp_path / "w.safetensors", module.state_dict(), dtype=torch.float16)
    assert digest == sha256_file(tmp_path / "w.safetensors")
    state = load_tensors(tmp_path / "w.safetensors", sha256=digest, what="test weights", recorded_in="x.json")
    assert state["weight"].dtype == torch.float16
    other = torch.nn.Linear(3, 2)
    load_state(other, state, what="test weights", target="a Linear(3, 2)", path=tmp_path)
    assert torch.allclose(other.weight, module.weight, atol=1e-3) and other.weight.dtype == torch.float32
    again = save_tensors(tmp_path / "again.safetensors", module.state_dict(), dtype=torch.float16)
    assert again == digest  # equal weights, equal hash


def test_tampered_and_missing_files_fail(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    digest = save_tensors(path, {"a": torch.ones(4)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash check"):
        load_tensors(path, sha256=digest, what="test weights", recorded_in="x.json")
    path.unlink()
    with pytest.raises(ModelError, match="test weights are missing"):
        load_tensors(path, sha256=digest, what="test weights", recorded_in="x.json")


def test_strict_keys_and_shapes() -> None:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_state({"a": torch.ones(2), "b": torch.ones(3)}, expected, what="w", target="m")
    with pytest.raises(ModelError, match=r"1 missing \(e.g. \['b'\]\), 1 unexpected"):
        check_state({"a": torch.ones(2), "c": torch.ones(3)}, expected, what="w", target="m")
    with pytest.raises(ModelError, match="1 of another shape"):
        check_state({"a": torch.ones(2), "b": torch.ones(4)}, expected, what="w", target="m")
    check_state({"a", "b"}, {"a", "b"}, what="w", target="m")  # names only (a diffusers folder's keys)


def test_manifest_reading_and_folder_swap(tmp_path) -> None:
    with pytest.raises(ModelError, match="is missing; do this"):
        read_json_manifest(tmp_path / "m.json", what="manifest", hint="do this")
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a JSON object"):
        read_json_manifest(tmp_path / "m.json", what="manifest", hint="")
    (tmp_path / "m.json").write_text(json.dumps({"ok": 1}))
    assert read_json_manifest(tmp_path / "m.json", what="manifest", hint="") == {"ok": 1}

    folder = tmp_path / "model"
    save_folder(folder, lambda tmp: (tmp / "a.txt").write_text("one"))

    def broken(tmp):
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        save_folder(folder, broken)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "model"]
