"""Registry attack suite: tamper with a tiny registry the way an attacker with write access to registry.sqlite
would, and record what `keys check` says. Also times a full check (chain, view, checkpoints) on a larger log.

The scenarios live in medsign_forensics.provenance.attacks (the tests run the same ones). Writes
benchmarks/results/registry_attack_suite.md.

    python benchmarks/registry_attack_suite.py --entries 1000
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from medsign_forensics import __version__
from medsign_forensics.fileio import write_atomic
from medsign_forensics.provenance import IssuerKey, ModelInfo, Registry, load_policy
from medsign_forensics.provenance.attacks import SCENARIOS, run_scenario

RESULTS = Path(__file__).resolve().parent / "results" / "registry_attack_suite.md"


def _time_check(entries: int) -> tuple[float, float]:
    """Seconds to issue ``entries`` keys (revoking every tenth) and to check the resulting registry."""
    issuer = IssuerKey.generate("Benchmark Issuer")
    model = ModelInfo(name="mini-cxr", version="0.1.0", weights_sha256="cd" * 32)
    with tempfile.TemporaryDirectory(prefix="medsign-attack-suite-") as tmp, \
            Registry.open(Path(tmp) / "registry", create=True) as registry:
        began = time.perf_counter()
        for index in range(entries):
            entry = registry.issue(issuer, model=model, deployment=f"bench-{index}", policy=load_policy())
            if index % 10 == 0:
                registry.revoke(entry.provenance_id, issuer, reason="benchmark")
        issued = time.perf_counter() - began
        began = time.perf_counter()
        report = registry.check({issuer.key_id: issuer.public_key})
        checked = time.perf_counter() - began
        assert report.ok, report.reason
        return issued, checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000, help="keys issued for the timing run")
    args = parser.parse_args()
    rows, failures = [], 0
    for scenario in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="medsign-attack-suite-") as tmp:
            report = run_scenario(scenario, Path(tmp))
        expected = "clean" if not scenario.expect else "exit 1"
        passed = report.ok if not scenario.expect else (not report.ok and scenario.expect in (report.reason or ""))
        failures += not passed
        verdict = "clean" if report.ok else ("TAMPERED" if report.tampered else "UNANCHORED")
        reason = (report.reason or "").replace("|", "\\|")
        rows.append(f"| {scenario.name} | {scenario.description} | {scenario.pinned} | {expected} | "
                    f"{verdict} (exit {0 if report.ok else 1}) | {reason} | {'yes' if passed else 'NO'} |")
        print(f"{'ok ' if passed else 'BAD'} {scenario.name}: {verdict}: {report.reason}")
    issued, checked = _time_check(args.entries)
    revocations = (args.entries + 9) // 10
    lines = [
        "# Registry attack suite",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, medsign-forensics {__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}. Command: "
        f"`python benchmarks/registry_attack_suite.py --entries {args.entries}`.",
        "",
        "Victim: a tiny registry (issue A, issue B, revoke B, issue C; one signed checkpoint per write). The auditor "
        "kept the signed checkpoint file written after the last entry (`keys checkpoint --out`) and the issuer's "
        "public key (`--trust`). The attacker can write registry.sqlite (drops the append-only triggers, re-chains "
        "the log with the public hash function) but holds no issuer private key, except in the key-swap rows, "
        "where they bring their own. 'checked with' says what the auditor passed to `keys check`.",
        "",
        "| attack | what the attacker did | checked with | expected | keys check | one-line reason | as expected |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"{len(SCENARIOS) - failures} of {len(SCENARIOS)} scenarios behaved as expected.",
        "",
        f"Timing: issuing {args.entries} keys and {revocations} revocations (each write one transaction with its "
        f"log entry and signed checkpoint) took {issued:.2f} s; `check` of the resulting "
        f"{args.entries + revocations}-entry log (every signature, the chain, the keys view, every checkpoint) "
        f"took {checked:.2f} s.",
        "",
        "Limits: without a pin, an older copy of the whole database (rollback) is internally consistent and passes; "
        "an attacker who deletes every checkpoint and re-chains the log leaves an UNANCHORED registry (exit 1 "
        "unless `--allow-unanchored`), not a TAMPERED one, because nothing signed says what was there before.",
        "",
    ]
    write_atomic(RESULTS, "\n".join(lines).encode("utf-8"))
    print(f"wrote {RESULTS}")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
