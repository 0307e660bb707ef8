"""A reader whose cost follows what is looked at (issue 14, items 2 and 3): an indexed archive opens without
opening a footer, a refresh reads only the new files, a query about one run reads only that run's files,
a remote archive copies files into a cache that stays within its bound (least recently used out first),
and an http archive opens from its manifest alone. Results equal a reader that reads every footer."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import os
import random
import threading
import time
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from data_schema import schema
from data_schema.layout import ROOT_FILE, join, segment_path
from telemetry.maintain.compaction import compact
from telemetry.maintain.manifest import write_manifest
from telemetry.read.archive import Archive
from telemetry.read.remote_cache import FileCache
from telemetry.store import encodings
from telemetry.store.fs import atomic_write_bytes, open_fs
from telemetry.store.run_index import INDEX_DIR, read_run_index, update_run_index

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class CountingMemoryFS(MemoryFileSystem):
    """memory:// that records every path it opens (footer reads and copies both open the file) and every
    folder it lists."""

    protocol = "countmem"
    opened: list[str] = []
    listed: list[str] = []

    def ls(self, path, detail=True, **kwargs):  # noqa: ANN001 - fsspec's signature
        CountingMemoryFS.listed.append(str(path).split("://", 1)[-1].rstrip("/"))
        return super().ls(path, detail=detail, **kwargs)

    def find(self, path, *args, **kwargs):  # noqa: ANN001 - fsspec's signature
        CountingMemoryFS.listed.append(str(path).split("://", 1)[-1].rstrip("/"))
        return super().find(path, *args, **kwargs)

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001 - fsspec's signature
        if "r" in mode:
            CountingMemoryFS.opened.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)


def put(fs, root: str, rel: str, table: pa.Table) -> None:
    atomic_write_bytes(fs, join(root, rel), encodings.segment_bytes(table).to_pybytes())


def write_run(fs, root: str, run: str, *, ranks: int = 2, segments: int = 3, steps: int = 10, attempt: int = 0,
              first_seq: int = 0, seed: int = 0) -> dict[str, float]:
    """Segments of a run as its writers leave them; returns {name: sum of values} written."""
    rng = np.random.default_rng(seed)
    atomic_write_bytes(fs, join(root, ROOT_FILE), b'{"format_version": 1}')
    put(fs, root, segment_path("runs", run, attempt, 0, first_seq), pa.Table.from_pylist(
        [{"run_id": run, "name": f"name of {run}", "status": "running", "created_at": T0, "updated_at": T0}],
        schema=schema("runs")))
    sums: dict[str, float] = {}
    for rank in range(ranks):
        for s in range(segments):
            step = np.arange(s * steps, (s + 1) * steps, dtype=np.int64)
            n = len(step) * 2
            values = rng.random(n)
            names = ["loss", "lr"] * len(step)
            for name, v in zip(names, values, strict=True):
                sums[name] = sums.get(name, 0.0) + float(v)
            put(fs, root, segment_path("metrics", run, attempt, rank, first_seq + s), pa.table({
                "run_id": [run] * n, "attempt": pa.array([attempt] * n, pa.int32()),
                "rank": pa.array([rank] * n, pa.int32()), "step": np.repeat(step, 2), "name": names,
                "value": values, "wall_time": pa.array([T0] * n, pa.timestamp("us", tz="UTC"))},
                schema=schema("metrics")))
    return sums


def memory_url() -> str:
    return f"countmem://growth-{uuid.uuid4().hex[:8]}"


def test_an_indexed_archive_opens_without_opening_a_footer(tmp_path):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    for r in range(3):
        write_run(fs, root, f"run-{r}")
        update_run_index(fs, root, f"run-{r}")
    a = Archive(url)
    assert a._catalog.footers_read == 0 and a.problems == []
    assert sorted(a.runs()["run_id"]) == ["run-0", "run-1", "run-2"]


def test_a_reader_writes_back_the_footers_it_read_so_the_next_one_reads_none(tmp_path):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_run(fs, root, "big", ranks=8, segments=5)
    first = Archive(url)
    assert first._catalog.footers_read == 0  # opening reads nothing: queries scan what they touch
    first.snapshot  # noqa: B018 - the whole archive, scanned now
    assert first._catalog.footers_read == 41  # 40 metric segments and the runs file
    assert len(read_run_index(fs, root, "big")) == 41
    again = Archive(url)
    assert again.version == first.version and again._catalog.footers_read == 0


def test_refresh_after_new_segments_reads_only_the_new_footers(tmp_path):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_run(fs, root, "live", ranks=2, segments=3)
    a = Archive(url)
    a.snapshot  # noqa: B018 - a reader that looked at the whole archive refreshes the whole archive
    before = a._catalog.footers_read
    assert not a.refresh() and a._catalog.footers_read == before  # nothing new: nothing read
    write_run(fs, root, "live", ranks=2, segments=2, first_seq=3)  # 4 new segments and a runs row
    assert a.refresh()
    assert a._catalog.footers_read == before + 5
    assert a.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 2 * 5 * 10 * 2


def test_an_index_entry_whose_file_changed_is_not_trusted(tmp_path):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_run(fs, root, "r", ranks=1, segments=1)
    update_run_index(fs, root, "r")
    rel = segment_path("metrics", "r", 0, 0, 0)
    put(fs, root, rel, pa.Table.from_pylist([{"run_id": "r", "attempt": 0, "rank": 0, "step": 5, "name": "loss",
                                              "value": 1.0}], schema=schema("metrics")))
    a = Archive(url)
    assert a.metrics("r")["step"].tolist() == [5]
    assert a._catalog.footers_read == 1


def test_a_query_over_one_run_of_a_remote_archive_reads_only_that_runs_files(tmp_path):
    url = memory_url()
    fs, root = open_fs(url)
    for r in range(4):
        write_run(fs, root, f"run-{r}", seed=r)
        update_run_index(fs, root, f"run-{r}")
    CountingMemoryFS.opened.clear()
    CountingMemoryFS.listed.clear()
    a = Archive(url, cache_dir=str(tmp_path / "cache"))
    assert {p.rsplit("/", 1)[-1] for p in CountingMemoryFS.opened} <= {ROOT_FILE}  # open reads no run's file
    assert CountingMemoryFS.listed == []  # nor lists one
    curve = a.curve("run-2", "loss", buckets=5)
    assert curve["count"].sum() == 2 * 3 * 10
    read = [p for p in CountingMemoryFS.opened if p.endswith(".parquet")]
    assert read and all("/run_id=run-2/" in p for p in read)
    assert {p.rsplit("/", 1)[-1] for p in CountingMemoryFS.opened if p.endswith(".json")} <= {
        "run-2.json", ROOT_FILE, "manifest.json"}  # the run's own index, no other run's
    # listed: the tables' top folders (which runs exist) and run-2's folders; never another run's files
    assert CountingMemoryFS.listed and not any("run_id=run-" in p and "run_id=run-2" not in p
                                               for p in CountingMemoryFS.listed)
    assert any("run_id=run-2" in p for p in CountingMemoryFS.listed)
    assert root.split("://", 1)[-1].rstrip("/") not in CountingMemoryFS.listed  # the archive was not listed whole
    assert a.cache.fetched_files == len(read)
    # a second curve of the same run reads the cached copies: nothing is fetched again
    CountingMemoryFS.opened.clear()
    a.curve("run-2", "lr", buckets=5)
    assert [p for p in CountingMemoryFS.opened if p.endswith(".parquet")] == []


def test_a_remote_archive_without_indexes_opens_by_reading_footers_not_copying_files(tmp_path):
    url = memory_url()
    fs, root = open_fs(url)
    write_run(fs, root, "r", ranks=2, segments=2)
    a = Archive(url, cache_dir=str(tmp_path / "cache"))
    a.snapshot  # noqa: B018 - the whole archive, scanned now
    assert a._catalog.footers_read == 5 and a.cache.fetched_files == 0
    assert not os.path.exists(tmp_path / "cache" / "metrics")
    assert a.runs()["run_id"].tolist() == ["r"]


def test_the_cache_stays_within_its_bound_and_evicts_the_least_recently_used(tmp_path):
    fs = MemoryFileSystem()
    root = f"/lru-{uuid.uuid4().hex[:8]}"
    for name in "abcd":
        fs.pipe_file(f"{root}/t/{name}.bin", b"x" * 1000)
    cache = FileCache(fs, root, "memory://" + root, str(tmp_path / "cache"), max_bytes=2500)
    now = time.time()
    for i, name in enumerate("abc"):
        assert cache.ensure([(f"t/{name}.bin", 1000)]) == {}
        os.utime(cache.path(f"t/{name}.bin"), (now - 100 + i, now - 100 + i))  # a older than b older than c
    assert cache.total_bytes() <= 2500
    assert not os.path.exists(cache.path("t/a.bin"))  # c pushed out the least recently used
    os.utime(cache.path("t/b.bin"), (now - 200, now - 200))  # b is now the least recently used
    assert cache.ensure([("t/c.bin", 1000)]) == {} and cache.fetched_files == 3  # c was cached: a touch
    assert cache.ensure([("t/d.bin", 1000)]) == {}
    assert not os.path.exists(cache.path("t/b.bin")) and os.path.exists(cache.path("t/c.bin"))
    assert cache.total_bytes() <= 2500
    assert cache.ensure([("t/gone.bin", 10)]) == {"t/gone.bin": "listed in the manifest but missing from the archive"}


def test_an_archive_bigger_than_the_cache_still_answers_every_run(tmp_path):
    url = memory_url()
    fs, root = open_fs(url)
    sums = {f"run-{r}": write_run(fs, root, f"run-{r}", seed=r) for r in range(3)}
    a = Archive(url, cache_dir=str(tmp_path / "cache"), cache_max_bytes=1)  # no copy outlives its use
    for run, want in sums.items():
        assert a.metrics(run, "loss")["value"].sum() == pytest.approx(want["loss"])
        for folder, _, names in os.walk(tmp_path / "cache"):  # as if every copy was used long ago
            for name in names:
                os.utime(os.path.join(folder, name), (time.time() - 3600, time.time() - 3600))
    a.curve("run-0", "lr", buckets=3)
    cached = {os.path.relpath(os.path.join(d, f), tmp_path / "cache") for d, _, fs_ in os.walk(tmp_path / "cache")
              for f in fs_}
    assert cached and all("run_id=run-0" in c for c in cached)  # only what the last query needed stayed


def curve_of(archive: Archive, run: str) -> list[dict]:
    # first/last pick among ranks at the same step in scan order: not a property of the catalog
    return archive.curve(run, "loss", buckets=7).drop(columns=["first", "last"]).to_dict("records")


def rounded(obj):
    """Results with floats to 9 significant digits: sums over files in another order differ in the last bits."""
    if isinstance(obj, float):
        return float(f"{obj:.9g}")
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_results_equal_a_reader_that_reads_every_footer_on_random_archives(tmp_path, seed):
    rnd = random.Random(seed)
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    runs = [f"run-{i}" for i in range(rnd.randint(1, 4))]
    for i, run in enumerate(runs):
        write_run(fs, root, run, ranks=rnd.randint(1, 3), segments=rnd.randint(1, 4), steps=rnd.randint(1, 20),
                  seed=seed * 10 + i)
        if rnd.random() < 0.5:
            update_run_index(fs, root, run)
    queries = ["SELECT run_id, name, count(*) AS n, sum(value) AS s FROM metrics GROUP BY ALL ORDER BY ALL",
               "SELECT run_id, attempt, rank, max(step) AS hi FROM journey_metrics GROUP BY ALL ORDER BY ALL"]
    indexed = Archive(url)
    got = [indexed.sql(q).to_pylist() for q in queries] + [indexed.runs().to_dict("records")]
    got += [curve_of(indexed, r) for r in runs]
    for rel in fs.ls(join(root, INDEX_DIR)) if fs.exists(join(root, INDEX_DIR)) else []:
        fs.rm(rel)
    remote = memory_url()
    rfs, rroot = open_fs(remote)
    for path in fs.find(root):  # the same files on a store this process must copy from
        rfs.pipe_file(join(rroot, path[len(root) + 1:]), fs.cat_file(path))
    for other in (Archive(url), Archive(remote, cache_dir=str(tmp_path / "cache"))):
        want = [other.sql(q).to_pylist() for q in queries] + [other.runs().to_dict("records")]
        want += [curve_of(other, r) for r in runs]
        assert json.dumps(rounded(got), default=str) == json.dumps(rounded(want), default=str)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _CountingHandler.requested.append(self.path)
        return super().do_GET()

    def list_directory(self, path):  # noqa: ANN001 - a static host does not list
        self.send_error(403, "directory listing is disabled")

    def log_message(self, *args) -> None:
        pass


def test_an_http_archive_opens_from_its_manifest_without_reading_data_files(tmp_path):
    folder = tmp_path / "site"
    fs, root = open_fs(str(folder))
    for r in range(3):
        write_run(fs, root, f"run-{r}", seed=r)
    write_manifest(str(folder))
    handler = functools.partial(_CountingHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _CountingHandler.requested.clear()
        a = Archive(f"http://127.0.0.1:{server.server_address[1]}", cache_dir=str(tmp_path / "cache"))
        assert a.problems == [] and a.snapshot.from_manifest
        assert [p for p in _CountingHandler.requested if p.endswith(".parquet")] == []
        _CountingHandler.requested.clear()
        assert a.curve("run-1", "loss", buckets=4)["count"].sum() == 2 * 3 * 10
        read = [p for p in _CountingHandler.requested if p.endswith(".parquet")]
        assert read and all("/run_id=run-1/" in p for p in read)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_index_leaves_out_parts_a_compaction_replaced_while_they_wait_for_deletion(tmp_path):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_run(fs, root, "r", ranks=4, segments=5)
    compact(url, "r", grace_s=600)  # the 20 parts stay on disk for the grace period
    assert len([p for p in fs.find(root) if "/metrics/run_id=r/part-" in p]) == 20
    entries = update_run_index(fs, root, "r")
    assert not [rel for rel in entries if rel.startswith("metrics/") and "/part-" in rel]
    a = Archive(url)
    assert a.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 4 * 5 * 10 * 2
    assert a._catalog.footers_read == 0  # every live file's facts came from the index
