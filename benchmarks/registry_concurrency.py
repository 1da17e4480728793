"""Concurrent issuing: P processes issue K keys each into one registry; then check everything.

Measures the wall time of the issuing phase (all workers start together after their issuer key is
decrypted), then verifies: P*K rows, all provenance IDs and keys distinct, every pair of keys at least the
policy's minimum Hamming distance apart, and `check()` clean. Writes benchmarks/results/registry_concurrency.md.

    python benchmarks/registry_concurrency.py --processes 8 --keys 100
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medsign_forensics.fileio import write_atomic
from medsign_forensics.key import hex_to_bits
from medsign_forensics.provenance import ModelInfo, Registry, ScryptParams, create_issuer_key, load_issuer_key
from medsign_forensics.provenance.policy import load_policy

PASSPHRASE = "benchmark passphrase, not a secret"
RESULTS = Path(__file__).resolve().parent / "results" / "registry_concurrency.md"


def _worker(key_file: str, folder: str, start: multiprocessing.synchronize.Event, count: int, worker: int,
            ready: multiprocessing.Queue, done: multiprocessing.Queue) -> None:
    issuer = load_issuer_key(key_file, PASSPHRASE)  # scrypt at full cost, before the clock starts
    policy = load_policy("default")
    model = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="cd" * 32)
    with Registry.open(folder) as registry:
        ready.put(worker)
        start.wait()
        began = time.perf_counter()
        for i in range(count):
            registry.issue(issuer, model=model, deployment=f"bench-w{worker}-{i}", policy=policy)
        done.put((worker, time.perf_counter() - began))


def run(processes: int, keys: int) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="medsign-registry-bench-") as tmp:
        key_file = Path(tmp) / "issuer.key"
        create_issuer_key(key_file, PASSPHRASE, name="Benchmark Issuer", scrypt=ScryptParams())
        folder = Path(tmp) / "registry"
        Registry.create(folder).close()
        context = multiprocessing.get_context("spawn")
        start, ready, done = context.Event(), context.Queue(), context.Queue()
        workers = [context.Process(target=_worker, args=(str(key_file), str(folder), start, keys, n, ready, done))
                   for n in range(processes)]
        for worker in workers:
            worker.start()
        for _ in workers:  # every worker has decrypted its key (scrypt) and opened the registry
            ready.get(timeout=300)
        began = time.perf_counter()
        start.set()
        per_worker = [done.get(timeout=600) for _ in workers]
        wall = time.perf_counter() - began
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise SystemExit(f"a worker failed with exit code {worker.exitcode}")

        check_began = time.perf_counter()
        with Registry.open(folder) as registry:
            entries = registry.entries()
            report = registry.check()
        check_seconds = time.perf_counter() - check_began
        keys_matrix = np.stack([hex_to_bits(e.key_hex) for e in entries])
        distances = (keys_matrix[:, None, :] != keys_matrix[None, :, :]).sum(axis=2)
        np.fill_diagonal(distances, keys_matrix.shape[1])
        return {
            "processes": processes,
            "keys_per_process": keys,
            "rows": len(entries),
            "distinct_ids": len({e.provenance_id for e in entries}),
            "distinct_keys": len({e.key_hex for e in entries}),
            "min_distance": int(distances.min()),
            "check_ok": report.ok,
            "wall_seconds": wall,
            "slowest_worker_seconds": max(seconds for _, seconds in per_worker),
            "check_seconds": check_seconds,
            "load_average_before": load_before,
        }


def write_results(result: dict[str, object], command: str) -> None:
    total = int(result["rows"])
    lines = [
        "# Registry under concurrent writers",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "- machine: 2-core CPU VM, no GPU "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})",
        f"- command: `{command}`",
        f"- 1-minute load average before the run: {float(result['load_average_before']):.1f} "
        "(the machine is shared; other work competes for the 2 cores)",
        "- registry: SQLite WAL, synchronous=FULL, BEGIN IMMEDIATE per key, default policy (min distance 8)",
        "",
        "| processes | keys each | rows | distinct IDs | distinct keys | min pairwise distance | `check` | "
        "issuing wall time | keys/s | `check` time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {result['processes']} | {result['keys_per_process']} | {total} | {result['distinct_ids']} | "
        f"{result['distinct_keys']} | {result['min_distance']} | {'clean' if result['check_ok'] else 'FAILED'} | "
        f"{result['wall_seconds']:.2f} s | {total / float(result['wall_seconds']):.0f} | "
        f"{result['check_seconds']:.2f} s |",
        "",
        "Wall time runs from the moment all workers are released (issuer keys already decrypted) until the last "
        "worker has committed its last key; each key is one durable write transaction.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS, "\n".join(lines).encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--keys", type=int, default=100, help="keys issued by each process")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = parser.parse_args()
    result = run(args.processes, args.keys)
    for name, value in result.items():
        print(f"{name}: {value}")
    ok = (result["rows"] == result["distinct_ids"] == result["distinct_keys"] == args.processes * args.keys
          and result["check_ok"] and int(result["min_distance"]) >= load_policy().min_hamming_distance)
    if not args.no_write:
        write_results(result, f"python benchmarks/registry_concurrency.py --processes {args.processes} "
                              f"--keys {args.keys}")
    if not ok:
        raise SystemExit("FAILED: collisions or check problems (see above)")


if __name__ == "__main__":
    main()
