"""Verify with the shipped extractor and the demo registry: an attribution needs the mark bound to the image.

The demo deployment's key has a binding secret (`medsign keys add-binding`); its marks written on phantoms
attribute, the same marks copied onto other phantoms are at most inconclusive, and a registry without the
secret never attributes a spectral match.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.spectral import STORE, copy_lattice, phantom_radiograph

from medsign_forensics.fileio import save_png
from medsign_forensics.generate import DEFAULT_DEPLOYMENT_DIR
from medsign_forensics.provenance.policy import Attribution
from medsign_forensics.verify import DEFAULT_REGISTRY_DIR, VerdictKind, Verifier
from medsign_forensics.watermark.deployment import load_deployment


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[Path]]:
    folder = tmp_path_factory.mktemp("binding")
    hosts = [phantom_radiograph(seed) for seed in range(10, 14)]
    head = load_deployment(DEFAULT_DEPLOYMENT_DIR).head()
    assert head.binding is not None  # the demo deployment binds its mark
    with torch.no_grad():
        genuine = [STORE.exact(x) for x in head(torch.from_numpy(np.stack(hosts))[:, None])[:, 0].numpy()]
    forged = [copy_lattice(target, donor, head.spectral) for donor, target in zip(genuine, hosts[1:] + hosts[:1])]
    out: dict[str, list[Path]] = {"genuine": [], "forged": []}
    for name, images in (("genuine", genuine), ("forged", forged)):
        for index, image in enumerate(images):
            path = folder / f"{name}-{index}.png"
            save_png(path, image)
            out[name].append(path)
    return out


def checks_of(verdict) -> dict[str, str]:
    return {check.name: check.status.value for check in verdict.checks}


def test_bound_marks_attribute_and_copied_marks_do_not(files) -> None:
    with Verifier.open() as verifier:
        genuine = [verifier.verify_file(path) for path in files["genuine"]]
        forged = [verifier.verify_file(path) for path in files["forged"]]
    for verdict in genuine:
        assert verdict.kind is VerdictKind.ATTRIBUTED and checks_of(verdict)["content_binding"] == "pass"
        assert verdict.match is not None and verdict.match.coherence >= verdict.match.coherence_threshold
    carrying = [v for v in forged if v.match is not None and v.match.matched_bits >= 41]
    assert len(carrying) >= 3  # the copies carry the key: 41+ of 48 bits attribute on their own
    for verdict in carrying:
        assert verdict.kind is VerdictKind.INCONCLUSIVE and verdict.evidence is None
        details = " ".join(check.detail for check in verdict.checks)
        assert checks_of(verdict)["content_binding"] == "fail" and "not bound to this image" in details
    assert all(v.kind is not VerdictKind.ATTRIBUTED for v in forged)


def test_without_a_binding_secret_a_spectral_match_is_at_most_inconclusive(files, tmp_path) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(DEFAULT_REGISTRY_DIR, registry)
    with sqlite3.connect(registry / "registry.sqlite") as db:  # a registry from before content binding
        db.execute("DROP TABLE spectral_bindings")
    with Verifier.open(registry=registry) as verifier:
        verdict = verifier.verify_file(files["genuine"][0])
    assert verdict.kind is VerdictKind.INCONCLUSIVE and verdict.match.attribution is Attribution.INCONCLUSIVE
    assert verdict.match.matched_bits >= 44 and checks_of(verdict)["content_binding"] == "fail"
    assert "no binding secret" in " ".join(c.detail for c in verdict.checks)
