"""Fixtures for DICOM tests: an issuer, a registry with one deployment, and a written study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.dicom import MODEL, Deployment

from medsign_forensics.provenance import IssuerKey, Registry, load_policy


@pytest.fixture
def deployment(tmp_path: Path):
    issuer = IssuerKey.generate("Test Imaging AI")
    with Registry.open(tmp_path / "registry", create=True) as registry:
        entry = registry.issue(issuer, model=MODEL, deployment="site-a", policy=load_policy())
        yield Deployment(issuer=issuer, registry=registry, entry=entry)


@pytest.fixture
def image8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(64, 48), dtype=np.uint8)


@pytest.fixture
def image16() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 4096, size=(40, 56), dtype=np.uint16)
