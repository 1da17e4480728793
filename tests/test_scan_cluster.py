"""The Dask engine of scan (medsign_forensics.cluster) on a LocalCluster of 2 worker processes with 1 thread each:
the same records as the local scan, every file recorded exactly once when workers die, a clear error and a
resumable report when the scheduler goes away, and the CLI options. Skipped when dask.distributed is absent
(except the test that asks for it to be absent)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.pacs import FakePacs
from helpers.verify import CrashingSettings, save_png

from medsign_forensics.cli.main import app
from medsign_forensics.evaluate.synthetic import World, build_extractor, build_world, sample_image
from medsign_forensics.pacs import pacs_config
from medsign_forensics.scan import VerifierSettings, scan_folder, scan_pacs
from medsign_forensics.scan_reports import read_jsonl
from medsign_forensics.verify import Verifier

TESTS = Path(__file__).resolve().parent
ALLOWED_FAILURES = 1  # the test cluster's distributed.scheduler.allowed-failures: fewer worker restarts per crash


class SlowSettings(VerifierSettings):
    """Settings whose verifier takes 0.1 s per file, so that files are still in flight when a worker is killed."""

    def open(self) -> Verifier:
        verifier = super().open()
        original = verifier.try_verify_file

        def try_verify_file(path, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(0.1)
            return original(path, **kwargs)

        verifier.try_verify_file = try_verify_file  # type: ignore[method-assign]
        return verifier


@pytest.fixture(scope="module")
def extractor_dir(tmp_path_factory) -> Path:
    return build_extractor(tmp_path_factory.mktemp("extractor"))


@pytest.fixture
def world(tmp_path: Path, extractor_dir: Path) -> World:
    return build_world(tmp_path / "world", extractor_dir)


@contextmanager
def local_cluster() -> Iterator[tuple]:
    """A LocalCluster of 2 worker processes, 1 thread each, as an existing cluster would be, and its client."""
    pytest.importorskip("distributed")
    import dask
    from distributed import Client, LocalCluster

    config = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
              "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config):
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                             silence_logs=logging.CRITICAL, scheduler_kwargs={"dashboard_address": ":0"})
    client = Client(local, set_as_default=False)
    try:
        yield local, client
    finally:
        client.close()
        local.close()


@pytest.fixture(scope="module")
def cluster():
    """The cluster shared by the tests that leave its workers alive."""
    with local_cluster() as shared:
        yield shared


@pytest.fixture
def own_cluster():
    """A cluster for one test that kills workers: on a slow machine a nanny may fail to bring its worker back,
    which must not starve the tests that follow."""
    with local_cluster() as private:
        yield private


def engine(cluster, **kwargs):
    from medsign_forensics.cluster import DaskEngine

    return DaskEngine(address=cluster[0].scheduler_address, **kwargs)


@pytest.fixture
def archive(tmp_path: Path, world: World) -> Path:
    """As in test_scan: the planted PNG, its study, a forged study, unwatermarked images, two bad files."""
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    (root / "planted.png").write_bytes(world.planted_png.read_bytes())
    world.write_study(root / "study.dcm")
    world.write_study(root / "forged.dcm", sample_image(44))
    for index, folder in enumerate((root, root, root / "sub")):
        save_png(folder / f"real{index}.png", sample_image(300 + index))
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    (root / "notes.txt").write_text("not an image")
    return root


def settings(world: World, kind: type[VerifierSettings] = VerifierSettings) -> VerifierSettings:
    return kind(registry=world.registry_dir, extractor=world.extractor_dir)


def comparable(path: Path) -> dict[str, dict]:
    """The JSONL records without their timing."""
    return {key: {k: v for k, v in record.items() if k != "seconds"} for key, record in read_jsonl(path).items()}


def lines_per_file(path: Path) -> Counter:
    return Counter(json.loads(line)["file"] for line in path.read_text().splitlines())


def many_files(root: Path, count: int) -> Path:
    for index in range(count):
        save_png(root / f"img{index:03d}.png", sample_image(500 + index))
    return root


def test_dask_scan_gives_the_local_records_and_resumes(cluster, world, archive, tmp_path):
    from medsign_forensics.cluster import opened_verifiers

    local_jsonl, dask_jsonl = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    local = scan_folder(archive, settings=settings(world), jsonl=local_jsonl, csv_path=tmp_path / "local.csv")
    before = cluster[1].run(opened_verifiers)
    seen = []
    pooled = scan_folder(archive, settings=settings(world), jsonl=dask_jsonl, csv_path=tmp_path / "dask.csv",
                         engine=engine(cluster), on_verdict=seen.append)
    assert pooled.counts == local.counts == {"attributed": 2, "mismatch": 1, "not detected": 3, "error": 2}
    assert comparable(dask_jsonl) == comparable(local_jsonl) and len(seen) == 8
    assert (tmp_path / "dask.csv").read_text() == (tmp_path / "local.csv").read_text()
    after = cluster[1].run(opened_verifiers)
    assert all(after[worker] - before.get(worker, 0) <= 1 for worker in after)  # the extractor loads once per worker
    # several files per task, and resuming a Dask scan (here with the local engine, and back)
    save_png(archive / "new.png", sample_image(400))
    again = scan_folder(archive, settings=settings(world), jsonl=dask_jsonl, resume=True,
                        engine=engine(cluster, files_per_task=3))
    assert again.scanned == 1 and again.resumed == 8 and lines_per_file(dask_jsonl).most_common(1)[0][1] == 1
    whole = scan_folder(archive, settings=settings(world), jsonl=tmp_path / "batched.jsonl",
                        engine=engine(cluster, files_per_task=4))
    assert whole.total == 9 and comparable(tmp_path / "batched.jsonl")[str(archive / "forged.dcm")] == \
        comparable(local_jsonl)[str(archive / "forged.dcm")]


def test_a_file_that_kills_its_worker_is_an_error_and_every_file_is_recorded_once(own_cluster, world, archive,
                                                                                   tmp_path):
    save_png(archive / "crash.png", sample_image(603))  # sorted first: in flight with innocent files
    jsonl = tmp_path / "crash.jsonl"
    summary = scan_folder(archive, settings=settings(world, CrashingSettings), jsonl=jsonl,
                          engine=engine(own_cluster))
    assert summary.counts == {"attributed": 2, "mismatch": 1, "not detected": 3, "error": 3}
    assert set(lines_per_file(jsonl).values()) == {1} and len(lines_per_file(jsonl)) == 9
    local = scan_folder(archive, settings=settings(world, CrashingSettings), workers=2, jsonl=tmp_path / "l.jsonl")
    assert comparable(jsonl) == comparable(tmp_path / "l.jsonl") and local.counts == summary.counts
    assert "process died while reading this file" in read_jsonl(jsonl)[str(archive / "crash.png")]["error"]


def test_a_worker_killed_mid_scan_loses_nothing(own_cluster, world, tmp_path):
    root = many_files(tmp_path / "many", 30)
    own_cluster[1].wait_for_workers(2, timeout=60)
    victim = max(own_cluster[1].run(os.getpid).values())
    killed = []

    def kill_one(record: dict) -> None:
        if not killed:  # after the first record: both workers have files in flight
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    jsonl = tmp_path / "killed.jsonl"
    summary = scan_folder(root, settings=settings(world, SlowSettings), jsonl=jsonl, engine=engine(own_cluster),
                          on_verdict=kill_one)
    assert killed and summary.counts == {"not detected": 30}
    assert lines_per_file(jsonl) == Counter({str(path): 1 for path in sorted(root.iterdir())})
    assert victim not in own_cluster[1].run(os.getpid).values()


def test_the_scheduler_going_away_ends_the_scan_with_one_line_and_a_resumable_report(world, tmp_path):
    pytest.importorskip("distributed")
    from medsign_forensics.cluster import ClusterError, DaskEngine

    root = many_files(tmp_path / "many", 40)
    script = ("import logging, sys, time\n"
              "from distributed import LocalCluster\n"
              "if __name__ == '__main__':\n"
              "    c = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,\n"
              "                     silence_logs=logging.CRITICAL, scheduler_kwargs={'dashboard_address': ':0'})\n"
              "    print(c.scheduler_address, flush=True)\n"
              "    time.sleep(120)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("tcp://"), address

        def kill_scheduler(record: dict) -> None:
            if process.poll() is None and record:
                os.killpg(process.pid, signal.SIGKILL)  # scheduler, nanny and worker: the group this test started

        jsonl = tmp_path / "lost.jsonl"
        with pytest.raises(ClusterError, match="lost the connection to the Dask scheduler at tcp://.*--resume") as lost:
            scan_folder(root, settings=settings(world, SlowSettings), jsonl=jsonl,
                        engine=DaskEngine(address=address, connect_timeout=2), on_verdict=kill_scheduler)
        assert "\n" not in str(lost.value) and lost.value.exit_code == 2
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
    done = lines_per_file(jsonl)
    assert 1 <= len(done) < 40 and set(done.values()) == {1}
    resumed = scan_folder(root, settings=settings(world), jsonl=jsonl, resume=True)
    assert resumed.total == 40 and resumed.resumed == len(done)
    assert set(lines_per_file(jsonl).values()) == {1}


def test_scan_pacs_on_the_cluster(cluster, world, tmp_path):
    study = world.write_study(tmp_path / "study.dcm")
    FakePacs.files = {"a-study": study.path.read_bytes(), "b-junk": b"not dicom at all"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePacs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://u:p@127.0.0.1:{server.server_address[1]}/dicom-web"
        config = pacs_config(url)
        local = scan_pacs(config, settings=settings(world), jsonl=tmp_path / "local.jsonl")
        pooled = scan_pacs(config, settings=settings(world), jsonl=tmp_path / "dask.jsonl", engine=engine(cluster))
    finally:
        server.shutdown()
        server.server_close()
    assert pooled.counts == local.counts == {"attributed": 1, "error": 1}
    assert comparable(tmp_path / "dask.jsonl") == comparable(tmp_path / "local.jsonl")


def test_unreachable_scheduler_and_bad_options(world, archive):
    pytest.importorskip("distributed")
    from medsign_forensics.cluster import ClusterError, DaskEngine

    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        scan_folder(archive, settings=settings(world), engine=DaskEngine(address="tcp://127.0.0.1:9",
                                                                         connect_timeout=1))
    with pytest.raises(ClusterError, match="not a Dask scheduler address"):
        scan_folder(archive, settings=settings(world), engine=DaskEngine(address="nonsense://x"))
    with pytest.raises(ValueError, match="files-per-task"):
        DaskEngine(files_per_task=0)
    with pytest.raises(ValueError, match="--workers 2 is for the local engine"):
        scan_folder(archive, settings=settings(world), workers=2, engine=DaskEngine())


def test_dask_engine_without_dask_names_the_extra(monkeypatch):
    from medsign_forensics.cluster import ClusterError, DaskEngine

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ClusterError, match=r"pip install medsign-forensics\[cluster\]") as missing:
        DaskEngine()
    assert missing.value.exit_code == 2
    result = CliRunner().invoke(app, ["scan", ".", "--engine", "dask"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "pip install medsign-forensics[cluster]" in result.output


# -- the CLI --------------------------------------------------------------------------------------------------


def invoke(world: World, *args: str):
    return CliRunner().invoke(app, ["scan", *args, "--registry", str(world.registry_dir),
                                    "--extractor", str(world.extractor_dir)], env={"COLUMNS": "200"})


def test_cli_on_a_cluster_and_on_a_local_dask_cluster(cluster, world, archive, tmp_path):
    local = invoke(world, str(archive), "--json")
    on_cluster = invoke(world, str(archive), "--json", "--cluster", cluster[0].scheduler_address,
                        "--jsonl", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "c.csv"))
    assert local.exit_code == on_cluster.exit_code == 1, on_cluster.output  # the forged study is an alarm
    assert json.loads(on_cluster.stdout)["counts"] == json.loads(local.stdout)["counts"]
    assert len(read_jsonl(tmp_path / "c.jsonl")) == 8 and (tmp_path / "c.csv").exists()
    own = invoke(world, str(archive), "--engine", "dask", "--dask-workers", "1")
    assert own.exit_code == 1 and "Alarms (1)" in own.output and "8 file(s) verified" in own.output


def test_cli_dask_errors(world, archive):
    pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        unreachable = invoke(world, str(archive), "--cluster", "tcp://127.0.0.1:9")
    assert unreachable.exit_code == 2 and "cannot reach the Dask scheduler" in unreachable.output
    assert len(unreachable.output.strip().splitlines()) == 1
    both = invoke(world, str(archive), "--engine", "dask", "--workers", "2")
    assert both.exit_code == 2 and "--dask-workers" in both.output
    local_only = invoke(world, str(archive), "--dask-workers", "2")
    assert local_only.exit_code == 2 and "--engine dask" in local_only.output
