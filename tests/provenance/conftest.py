"""Fixtures for provenance tests: a cheap issuer key (scrypt N=2**14, the minimum) and an empty registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.provenance import FAST_SCRYPT, PASSPHRASE

from medsign_forensics.provenance.keys import IssuerKey, create_issuer_key
from medsign_forensics.provenance.policy import load_policy
from medsign_forensics.provenance.registry import Registry


@pytest.fixture
def issuer_file(tmp_path: Path) -> Path:
    path = tmp_path / "issuer.key"
    create_issuer_key(path, PASSPHRASE, name="Test Issuer", scrypt=FAST_SCRYPT)
    return path


@pytest.fixture
def issuer() -> IssuerKey:
    return IssuerKey.generate("Test Issuer")


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "registry", create=True) as opened:
        yield opened


@pytest.fixture
def policy():
    return load_policy("default")
