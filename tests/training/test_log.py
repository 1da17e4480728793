"""The JSONL log and the run folder's resume policy."""

from __future__ import annotations

import json

import pytest

from medsign_forensics.errors import InputError
from medsign_forensics.training.log import JsonlLog
from medsign_forensics.training.run import RunFolder


def test_trim_drops_only_lines_after_the_checkpoint(tmp_path) -> None:
    log = JsonlLog(tmp_path / "log.jsonl")
    for stage, steps in (("vae", (1, 2, 3)), ("unet", (1, 2))):
        for step in steps:
            log.append({"stage": stage, "step": step, "loss": 0.5})
    log.append({"event": "note"})  # lines without a step count as step 0 and are kept
    log.trim(1, where={"stage": "vae"})
    assert [(e.get("stage"), e.get("step")) for e in log.read()] == [
        ("vae", 1), ("unet", 1), ("unet", 2), (None, None)
    ]
    log.trim(1)
    assert [(e.get("stage"), e.get("step")) for e in log.read()] == [("vae", 1), ("unet", 1), (None, None)]
    assert all(line == json.dumps(json.loads(line), sort_keys=True) for line in log.path.read_text().splitlines())


def test_a_log_that_is_not_json_lines_is_an_input_error(tmp_path) -> None:
    (tmp_path / "log.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="JSON lines"):
        JsonlLog(tmp_path / "log.jsonl").read()


def test_resume_policy(tmp_path) -> None:
    with pytest.raises(InputError, match="no training run to resume"):
        RunFolder(tmp_path / "run", marker="checkpoint.pt", resume=True)
    fresh = RunFolder(tmp_path / "run", marker="checkpoint.pt", resume=False)
    assert not fresh.resuming
    fresh.marker.write_bytes(b"x")
    with pytest.raises(InputError, match="--resume"):
        RunFolder(tmp_path / "run", marker="checkpoint.pt", resume=False)
    assert RunFolder(tmp_path / "run", marker="checkpoint.pt", resume=True).resuming
    assert RunFolder(tmp_path / "run", marker="checkpoint.pt", resume=None).resuming
    assert not RunFolder(tmp_path / "other", marker="checkpoint.pt", resume=None).resuming


def test_config_check_names_the_fields_that_differ(tmp_path) -> None:
    run = RunFolder(tmp_path, marker="checkpoint.pt", resume=None)
    saved = {"lr": 1e-3, "steps": 10, "device": "cpu"}
    run.check_config(saved, {**saved, "steps": 20, "device": "cuda"}, resumable={"steps", "device"})
    with pytest.raises(InputError, match=r"config differs from the one this run started with \(lr\)"):
        run.check_config(saved, {**saved, "lr": 1e-4}, resumable={"steps"})
    with pytest.raises(InputError, match=r"\(lr, seed\)"):
        run.check_config(saved, {**saved, "lr": 1e-4, "seed": 1})


def test_restart_log_empties_a_fresh_run_and_trims_a_resumed_one(tmp_path) -> None:
    log = JsonlLog(tmp_path / "train_log.jsonl")
    for step in (0, 1, 2, 3):
        log.append({"event": "step", "step": step})
    RunFolder(tmp_path, marker="checkpoint.pt", resume=None).restart_log(0)  # nothing was checkpointed
    assert log.read() == []
    for step in (0, 1, 2, 3):
        log.append({"event": "step", "step": step})
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    RunFolder(tmp_path, marker="checkpoint.pt", resume=None).restart_log(2)
    assert [e["step"] for e in log.read()] == [0, 1, 2]
