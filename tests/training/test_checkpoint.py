"""Atomic checkpoints that carry every random generator, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsign_forensics.errors import ModelError
from medsign_forensics.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint


def _draw(generator: torch.Generator, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    return torch.rand(3), torch.rand(3, generator=generator), rng.integers(0, 1000, 3)


def test_resume_restores_every_generator_exactly(tmp_path) -> None:
    torch.manual_seed(1)
    generator, rng = torch.Generator().manual_seed(2), np.random.default_rng(3)
    _draw(generator, rng)
    save_checkpoint(tmp_path / "ck.pt", {"step": 7}, generators={"data": generator}, numpy_rngs={"data": rng})
    expected = _draw(generator, rng)  # what an uninterrupted run draws next

    torch.manual_seed(99)  # a new process: everything seeded differently
    generator, rng = torch.Generator().manual_seed(98), np.random.default_rng(97)
    state = load_checkpoint(tmp_path / "ck.pt")
    restore_rng(state["rng"], generators={"data": generator}, numpy_rngs={"data": rng})
    resumed = _draw(generator, rng)
    assert state["step"] == 7 and "saved_at" in state
    assert torch.equal(expected[0], resumed[0]) and torch.equal(expected[1], resumed[1])
    assert np.array_equal(expected[2], resumed[2])


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind


def test_truncated_checkpoint_is_a_model_error(tmp_path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ModelError, match="cannot be read"):
        load_checkpoint(path)


def test_a_generator_missing_from_the_checkpoint_is_refused(tmp_path) -> None:
    save_checkpoint(tmp_path / "ck.pt", {})
    state = load_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(ModelError, match="data"):
        restore_rng(state["rng"], generators={"data": torch.Generator()})


def test_checkpoints_of_the_earlier_layout_still_resume(tmp_path) -> None:
    generator = torch.Generator().manual_seed(5)
    torch.rand(2, generator=generator)
    legacy = {"step": 3, "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": []}
    torch.save(legacy, tmp_path / "old.pt")
    expected = torch.rand(2, generator=generator)
    other = torch.Generator().manual_seed(0)
    restore_rng(load_checkpoint(tmp_path / "old.pt")["rng"], generators={"data": other})
    assert torch.equal(torch.rand(2, generator=other), expected)
