"""The same core reading suite on memory://, a real S3 API (moto server) and an http archive."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from telemetry import Archive, SandboxedQuery, Writer, WriterConfig
from telemetry.store.errors import ArchiveError, SandboxError


def write_two_attempts(url: str, storage_options: dict | None = None) -> None:
    opts = {"storage_options": storage_options} if storage_options else {}
    with Writer(url, run="journey", seed=1, **opts) as w:
        for s in range(10):
            w.metric(s, "loss", 1e6 if s == 7 else (math.nan if s == 3 else 1.0))
        w.event("nan", step=3, data_chunk=2)
    with Writer(url, run="journey", seed=2, resumed_from_step=6, **opts) as w:
        for s in range(6, 15):
            w.metric(s, "loss", -math.inf if s == 14 else 2.0)
        w.event("nan", step=8, data_chunk=2)


def check_core_suite(archive: Archive) -> None:
    assert archive.problems == []
    runs = archive.runs()
    assert list(runs["run_id"]) == ["journey"] and runs["attempts"].iloc[0] == 2
    journey = archive.sql("SELECT step, attempt FROM journey_metrics ORDER BY step").to_pylist()
    assert [r["attempt"] for r in journey] == [0] * 6 + [1] * 9  # attempt 1 replaced steps 6..9
    curve = archive.curve("journey", "loss", buckets=3)
    assert curve["count"].sum() == 15
    assert curve["max"].max() == 2.0  # the spike at step 7 belonged to the abandoned attempt
    assert curve["nan_count"].sum() == 1 and curve["neginf_count"].sum() == 1
    everything = archive.curve("journey", "loss", buckets=3, journey=False)
    assert everything["max"].max() == 1e6 and everything["count"].sum() == 19
    chunks = archive.chunk_incidents("journey")
    assert chunks.iloc[0]["n_attempts"] == 2 and list(chunks.iloc[0]["seeds"]) == [1, 2]
    sb = SandboxedQuery(archive, timeout_s=5)
    assert sb.run("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 19
    with pytest.raises(SandboxError, match="outside the archive"):
        sb.run("SELECT * FROM read_csv('/etc/passwd')")
    # DuckDB only ever reads local files: the archive itself or its cache
    assert all(os.path.isfile(f.local) and f.local.startswith(archive.local_root) for f in archive.snapshot.all_files())


def s3_options(moto_server) -> dict:
    # s3fs 2026.9 passes unknown keys on to AioSession, which refuses `retries`
    return {k: v for k, v in moto_server["storage_options"].items() if k != "retries"}


def cached_files(cache_dir) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(cache_dir) for f in files}


def test_memory_archive(tmp_path):
    url = f"memory://flightlog-{uuid.uuid4().hex[:8]}"
    write_two_attempts(url)
    archive = Archive(url, cache_dir=str(tmp_path / "cache"))
    check_core_suite(archive)
    with Writer(url, run="second") as w:
        w.metric(0, "loss", 1.0)
    assert archive.refresh() and sorted(archive.runs()["run_id"]) == ["journey", "second"]


def test_s3_archive_on_a_real_s3_api(moto_server, tmp_path):
    url = f"s3://{moto_server['bucket']}/archive-{uuid.uuid4().hex[:8]}"
    opts = s3_options(moto_server)
    write_two_attempts(url, opts)
    cache = tmp_path / "cache"
    archive = Archive(url, storage_options=opts, cache_dir=str(cache))
    check_core_suite(archive)
    first = cached_files(cache)
    assert len(first) == len(archive.snapshot.all_files())
    # segments are immutable: a second open reuses every cached copy
    again = Archive(url, storage_options=opts, cache_dir=str(cache))
    assert again.version == archive.version and cached_files(cache) == first
    with Writer(url, run="second", storage_options=opts) as w:
        w.metric(0, "loss", 1.0)
    assert archive.refresh() and sorted(archive.runs()["run_id"]) == ["journey", "second"]


def test_s3_archive_that_does_not_exist_is_a_clear_error(moto_server, tmp_path):
    with pytest.raises(ArchiveError, match="no flightlog archive"):
        Archive(f"s3://{moto_server['bucket']}/nothing-here", storage_options=s3_options(moto_server),
                cache_dir=str(tmp_path))


@pytest.fixture()
def http_archive(tmp_path):
    """A local archive served read-only by `python -m http.server` on loopback."""
    manifest = pytest.importorskip("telemetry.maintain.manifest")
    root = tmp_path / "served"
    write_two_attempts(str(root))
    manifest.write_manifest(str(root))
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(line.split(" port ")[1].split()[0])
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(base + "/flightlog.json", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base, root, manifest
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_http_archive_reads_through_the_manifest(http_archive, tmp_path):
    base, root, manifest = http_archive
    archive = Archive(base, cache_dir=str(tmp_path / "cache"))
    assert archive.snapshot.from_manifest
    check_core_suite(archive)
    # a file that is on the server but not in the manifest is not live (a writer without its close hook:
    # the hook would list the run's segments in the manifest)
    with Writer(str(root), run="second", writer_config=WriterConfig(compact_on_close=False)) as w:
        w.metric(0, "loss", 1.0)
    archive.refresh()
    assert list(archive.runs()["run_id"]) == ["journey"]
    manifest.write_manifest(str(root))
    assert archive.refresh() and sorted(archive.runs()["run_id"]) == ["journey", "second"]


def test_http_archive_without_manifest_says_to_index_it(tmp_path):
    root = tmp_path / "served"
    write_two_attempts(str(root))
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(proc.stdout.readline().split(" port ")[1].split()[0])
        time.sleep(0.2)
        with pytest.raises(ArchiveError, match="flightlog index"):
            Archive(f"http://127.0.0.1:{port}", cache_dir=str(tmp_path / "cache"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
