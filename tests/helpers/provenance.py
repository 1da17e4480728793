"""Constants shared by the provenance tests (a module with a unique name, importable from the tests)."""

from __future__ import annotations

from medsign_forensics.provenance.keys import ScryptParams
from medsign_forensics.provenance.records import ModelInfo

PASSPHRASE = "correct horse battery staple"
FAST_SCRYPT = ScryptParams(n=2**14)  # the minimum the loader accepts; the default (2**17) is tested once
MODEL = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="ab" * 32)
