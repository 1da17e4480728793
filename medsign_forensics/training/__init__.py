"""What every trainer shares, so that the four training stacks (base model, extractor, decoder, classifier)
speak one dialect of run folders, checkpoints, logs and progress.

run          the run folder: refuses to mix runs, decides whether a call resumes, checks the config
checkpoint   atomic checkpoints that carry every random generator, so a resumed run continues exactly
log          the JSONL training log, trimmed back to the checkpoint a resumed run restarts from
environment  the record of the machine and software a run used
schedule     the one learning-rate schedule: linear warm-up, cosine decay to a floor
progress     the one progress protocol: library code emits typed events, the CLI draws them
weights      hash-checked, strict-key save and load of safetensors model files and their JSON manifests
"""

from medsign_forensics.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from medsign_forensics.training.environment import environment, hardware, software
from medsign_forensics.training.log import JsonlLog
from medsign_forensics.training.progress import ProgressEvent, ProgressFn, notify
from medsign_forensics.training.run import RunFolder
from medsign_forensics.training.schedule import WarmupCosine
from medsign_forensics.training.weights import (
    check_state,
    load_state,
    load_tensors,
    read_json_manifest,
    save_folder,
    save_tensors,
    verify_sha256,
)

__all__ = [
    "JsonlLog",
    "ProgressEvent",
    "ProgressFn",
    "RunFolder",
    "WarmupCosine",
    "capture_rng",
    "check_state",
    "environment",
    "hardware",
    "load_checkpoint",
    "load_state",
    "load_tensors",
    "notify",
    "read_json_manifest",
    "restore_rng",
    "save_checkpoint",
    "save_folder",
    "save_tensors",
    "software",
    "verify_sha256",
]
