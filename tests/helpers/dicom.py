"""Shared objects for the DICOM tests (a module with a unique name, importable from the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsign_forensics.dicom import WrittenStudy, write_synthetic_study
from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, RegistryEntry

MODEL = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ef" * 32)
REPORT = "Right lower lobe consolidation. No pleural effusion."


@dataclass
class Deployment:
    issuer: IssuerKey
    registry: Registry
    entry: RegistryEntry

    @property
    def public_keys(self) -> dict:
        return self.registry.public_keys()

    def write(self, path: Path, image: np.ndarray, report: str = REPORT, **kwargs) -> WrittenStudy:
        return write_synthetic_study(path, image=image, report_text=report, model_name=MODEL.name,
                                     model_version=MODEL.version, weights_sha256=MODEL.weights_sha256,
                                     provenance=self.entry.signed_record, signer=self.issuer, **kwargs)
