"""Several processes issuing keys into one registry at once (the benchmark does 8 x 100; this does 4 x 10)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from helpers.provenance import PASSPHRASE

from medsign_forensics.key import hex_to_bits
from medsign_forensics.provenance.registry import Registry

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from medsign_forensics.provenance import ModelInfo, Registry, load_issuer_key, load_policy
    key_file, folder, go, count, worker, passphrase = sys.argv[1:]
    issuer = load_issuer_key(key_file, passphrase)
    policy = load_policy("default")
    model = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="cd" * 32)
    # Every worker draws the SAME candidate sequence: only the in-transaction distance check keeps them apart.
    rng = np.random.default_rng(1234)
    with Registry.open(folder) as registry:
        while not Path(go).exists():
            time.sleep(0.005)
        for i in range(int(count)):
            registry.issue(issuer, model=model, deployment=f"w{worker}-{i}", policy=policy, rng=rng)
""")


def test_concurrent_issuers_never_collide(tmp_path: Path, issuer_file: Path) -> None:
    processes, per_process = 4, 10
    folder = tmp_path / "shared-registry"
    Registry.create(folder).close()
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(issuer_file), str(folder), str(go),
                                 str(per_process), str(n), PASSPHRASE], stderr=subprocess.PIPE)
               for n in range(processes)]
    time.sleep(0.5)
    go.touch()
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()

    with Registry.open(folder) as registry:
        entries = registry.entries()
        report = registry.check()
    assert len(entries) == processes * per_process
    assert len({e.provenance_id for e in entries}) == len(entries)
    assert len({e.key_hex for e in entries}) == len(entries)
    assert {e.claimed_record().deployment for e in entries} == {
        f"w{n}-{i}" for n in range(processes) for i in range(per_process)}
    keys = np.stack([hex_to_bits(e.key_hex) for e in entries])
    distances = (keys[:, None, :] != keys[None, :, :]).sum(axis=2)
    np.fill_diagonal(distances, 99)
    assert distances.min() >= 8
    assert report.ok, report.to_dict()
