"""medsign-forensics: pathology-aware watermarking and forensic verification of AI-generated medical images."""

from __future__ import annotations

import os

# Idle OpenMP threads otherwise spin-wait: on a busy 2-core machine that made a U-Net forward pass 9x slower
# (2.7 s against 0.3 s, measured). Set before torch is imported anywhere in the toolkit; a user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
