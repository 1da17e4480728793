"""Scan throughput on a Dask cluster against the local engine, and a plan for 10 million files.

1,000 (--files) 256x256 8-bit PNG phantoms (medsign_forensics.phantom.renderer.render_report, no watermark) are
scanned end to end with the shipped extractor and the demo registry (the defaults of VerifierSettings()):
the local engine with 1 and 2 worker processes, then a LocalCluster (processes, one thread each) of 1 and 2
workers with each of --files-per-task files per task. Every run's records must equal the first run's (timings
aside). Then the Dask per-task cost on the same machine (trivial tasks through a 2-worker LocalCluster), the
rate at which the one writer appends JSONL records, and the size of a record, from which the plan for 10
million files on N nodes is computed.

    python benchmarks/scan_cluster_speed.py [--files 1000] [--local-workers 1 2] [--dask-workers 1 2]
                                            [--files-per-task 1 8 32]

Writes benchmarks/results/scan_cluster_speed.md. Needs the cluster extra (pip install medsign-forensics[cluster]).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPORTS = ("No acute cardiopulmonary abnormality.", "Small left pleural effusion.", "Right upper lobe pneumonia.",
           "Moderate cardiomegaly with pulmonary edema.", "Left lower lobe atelectasis.")
TARGET_FILES = 10_000_000
NODES = (1, 4, 16, 64)
CORES_PER_NODE = 16
SCHEDULER_SHARE = 0.25  # keep the scheduler at most this busy: tasks/s <= share x measured task rate
WRITER_SHARE = 0.25  # and each client's writer (it also receives the results and updates the progress bar)


def render(folder: Path, index: int) -> None:
    from PIL import Image

    from medsign_forensics.phantom.renderer import render_report

    study, _ = render_report(REPORTS[index % len(REPORTS)], seed=index, size=256)
    path = folder / f"{index // 100:02d}" / f"phantom{index:05d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(study.image_u8).save(path)


def task_rate(tasks: int = 2000) -> float:
    """Trivial tasks per second through a 2-worker LocalCluster: the client's and scheduler's cost per task."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.CRITICAL, scheduler_kwargs={"dashboard_address": ":0"})
    with cluster, Client(cluster, set_as_default=False) as client:
        client.gather(client.map(abs, range(-200, 0)))  # warm up
        start = time.perf_counter()
        futures = client.map(abs, range(tasks))
        client.gather(futures)
        return tasks / (time.perf_counter() - start)


def writer_rate(sample: dict, records: int = 20_000) -> float:
    """Records per second that scan's one writer can append (json.dumps, write, flush), as in scan._scan."""
    import json

    record = dict(sample)
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "w.jsonl", "a", encoding="utf-8") as sink:
        start = time.perf_counter()
        for index in range(records):
            record["file"] = f"/archive/{index // 100:05d}/phantom{index:08d}.png"
            sink.write(json.dumps(record, sort_keys=True) + "\n")
            sink.flush()
        return records / (time.perf_counter() - start)


def comparable(path: Path) -> dict[str, dict]:
    from medsign_forensics.scan_reports import read_jsonl

    return {key: {k: v for k, v in record.items() if k != "seconds"} for key, record in read_jsonl(path).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--local-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dask-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--files-per-task", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scan_cluster_speed.md")
    args = parser.parse_args()
    from medsign_forensics.cluster import DaskEngine
    from medsign_forensics.scan import VerifierSettings, file_tasks, list_files, scan_folder
    from medsign_forensics.training.environment import load_average, machine_line

    settings = VerifierSettings()
    runs = [("local", w, None) for w in args.local_workers] + [
        ("dask", w, per_task) for w in args.dask_workers for per_task in args.files_per_task]
    rows = []
    started = time.perf_counter()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pngs"
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(render, [folder] * args.files, range(args.files), chunksize=25))
        start = time.perf_counter()
        listed = file_tasks(list_files(folder))
        listing_rate = len(listed) / (time.perf_counter() - start)
        reference = None
        record_bytes = 0.0
        for engine_name, workers, per_task in runs:
            jsonl = Path(tmp) / f"{engine_name}-{workers}-{per_task}.jsonl"
            load = load_average()
            engine = None if engine_name == "local" else DaskEngine(workers=workers, files_per_task=per_task)
            start = time.perf_counter()
            summary = scan_folder(folder, settings=settings, workers=workers if engine is None else 1, engine=engine,
                                  jsonl=jsonl, csv_path=jsonl.with_suffix(".csv"))
            wall = time.perf_counter() - start
            assert summary.total == args.files and not summary.counts.get("error"), summary.counts
            records = comparable(jsonl)
            if reference is None:
                reference, record_bytes = records, jsonl.stat().st_size / args.files
            same = records == reference
            rows.append((engine_name, workers, per_task, wall, args.files / wall, dict(summary.counts), same, load))
            print(f"{engine_name} workers {workers} files/task {per_task}: {wall:.1f} s, {args.files / wall:.1f} "
                  f"images/s, {dict(summary.counts)}, identical: {same}, load before {load}", flush=True)
    rate_tasks = task_rate()
    print(f"trivial Dask tasks: {rate_tasks:.0f}/s", flush=True)
    writer = writer_rate(next(iter(reference.values())))
    print(f"JSONL writer: {writer:.0f} records/s", flush=True)
    total = time.perf_counter() - started

    inline = next(rate for name, w, _, _, rate, *_ in rows if name == "local" and w == 1)
    dask_one = {per_task: rate for name, w, per_task, _, rate, *_ in rows if name == "dask" and w == 1}
    best_per_task = max(dask_one, key=dask_one.get)
    per_core = dask_one[best_per_task]
    plan = []
    for nodes in NODES:
        cores = nodes * CORES_PER_NODE
        files_per_s = cores * per_core
        per_task_needed = max(1, -int(-files_per_s // (SCHEDULER_SHARE * rate_tasks)))
        shards = max(1, -int(-files_per_s // (WRITER_SHARE * writer)))
        hours = TARGET_FILES / files_per_s / 3600
        plan.append((nodes, cores, files_per_s, per_task_needed, shards, hours))

    command = (f"python benchmarks/scan_cluster_speed.py --files {args.files} --local-workers "
               f"{' '.join(map(str, args.local_workers))} --dask-workers {' '.join(map(str, args.dask_workers))} "
               f"--files-per-task {' '.join(map(str, args.files_per_task))}")
    lines = [
        "# Scan throughput: local engine against a Dask LocalCluster",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_line()}, dask.distributed {__import__('distributed').__version__}; every worker "
        "runs torch on 1 thread",
        f"- command: `{command}` (wall time of the whole script: {total:.0f} s)",
        f"- input: {args.files} PNG files of 256x256 8-bit phantoms (render_report, 5 reports, no watermark) in "
        f"{-(-args.files // 100)} folders; shipped extractor and demo registry (VerifierSettings() defaults)",
        f"- 1/5/15-minute load average before: {load_before}, after: {load_average()} (the machine is shared with "
        "other work; higher load means slower runs)",
        "",
        "Wall time of `scan_folder` (listing, worker or cluster start-up, verification, JSONL and CSV reports). "
        "`identical`: every record equals the first run's, timings aside.",
        "",
        "| engine | workers | files per task | wall s | images/s | verdicts | identical | load before |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ] + [f"| {name} | {w} | {'-' if per_task is None else per_task} | {wall:.1f} | {rate:.1f} | {counts} | "
         f"{'yes' if same else 'NO'} | {load} |" for name, w, per_task, wall, rate, counts, same, load in rows] + [
        "",
        f"- Dask per-task cost: {rate_tasks:.0f} trivial tasks/s through a 2-worker LocalCluster on this machine "
        f"(client, scheduler and workers on the same 2 cores: {1000 / rate_tasks:.2f} ms per task).",
        f"- The one JSONL writer (json.dumps, write, flush per record): {writer:.0f} records/s; a record is "
        f"{record_bytes:.0f} bytes.",
        f"- Listing (walk + stat) of the {args.files} files on local disk: {listing_rate:.0f} files/s.",
        "",
        "## Plan for 10 million files",
        "",
        f"One core verifies {inline:.0f} files/s on its own (local engine, 1 worker); through Dask, one worker "
        f"delivered {per_core:.0f} files/s (1 worker, {best_per_task} files per task; client and scheduler on the "
        "same 2 cores, so on a real cluster, where they have their own, a worker core gets closer to the first "
        f"figure). Planning with the Dask figure ({per_core:.0f} files/s per worker core), {CORES_PER_NODE}-core "
        f"nodes each running `dask worker tcp://scheduler:8786 --nworkers {CORES_PER_NODE} --nthreads 1`, linear "
        "scaling across nodes (workers share nothing but the scheduler and the file system), --files-per-task "
        f"chosen so that the scheduler is at most {SCHEDULER_SHARE:.0%} busy at the {rate_tasks:.0f} tasks/s "
        f"measured here, and enough concurrent shard clients that each writer is at most {WRITER_SHARE:.0%} busy:",
        "",
        "| nodes | worker cores | files/s | --files-per-task at least | concurrent shards | hours for 10 M files |",
        "| --- | --- | --- | --- | --- | --- |",
    ] + [f"| {nodes} | {cores} | {rate:.0f} | {per_task} | {shards} | {hours:.1f} |"
         for nodes, cores, rate, per_task, shards, hours in plan] + [
        "",
        "How to run it:",
        "",
        f"- Split the archive into shards of about 100,000 files (a top-level folder each). The client lists and "
        f"stats every file of its shard before the first is verified ({listing_rate:.0f} files/s here on local "
        "disk; a network file system is slower), keeps a task per file in memory, and on --resume reads its "
        f"JSONL report back ({record_bytes * TARGET_FILES / 1e9:.0f} GB of JSONL for 10 M files in one report). "
        "Run `medsign scan SHARD --cluster tcp://scheduler:8786 --files-per-task F --jsonl SHARD.jsonl --resume` "
        "for each shard, a few at a time as the table says, all against the one scheduler; every shard's "
        "report stays small, resumable and checkable on its own.",
        "- Workers open the files, the registry and the extractor at the client's paths: mount the archive "
        "read-only at the same path on every node and copy the registry and extractor there; install the same "
        "medsign-forensics version everywhere (the engine refuses workers that differ).",
        "- A node lost mid-scan costs only its files in flight (run again elsewhere); a file that crashes its "
        "decoder costs at most 2 x (allowed-failures + 1) worker restarts and is recorded as an error; a lost "
        "scheduler ends the running shards with exit code 2, and `--resume` continues them.",
        "- The scheduler's cost per task is what limits a large cluster: measure it on the scheduler node "
        f"(this script's trivial-task figure) and size --files-per-task from it; at {plan[-1][0]} nodes the "
        f"scheduler, not the workers, sets the pace unless tasks carry at least {plan[-1][3]} files.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
