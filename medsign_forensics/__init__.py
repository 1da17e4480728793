"""medsign-forensics: pathology-aware watermarking and forensic verification of AI-generated medical images."""

from __future__ import annotations

__version__ = "0.1.0"
