"""The manifest while a run is live (issue 14, item 5): external engines read the files
`_manifest/manifest.json` lists, so the live compactor keeps that list current after its passes, at the
cost of the changed run alone (no footer of another run is opened), and never makes one where the
archive has none."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from data_schema import schema, staged_path
from data_schema.layout import MANIFEST_FILE, ROOT_FILE, join, segment_path, temp_name
from telemetry import Writer, WriterConfig
from telemetry.maintain import live_compactor
from telemetry.maintain.compaction import CompactionConfig
from telemetry.maintain.compaction_gc import collect_garbage
from telemetry.maintain.live_compactor import LivePolicy, compact_live_run, follow
from telemetry.maintain.manifest import write_manifest
from telemetry.store import encodings
from telemetry.store.fs import atomic_write_bytes, open_fs

EAGER = LivePolicy(interval_s=0.0, min_parts=1, fanout=2, settle_s=0.0, grace_s=0.0)
NO_LOD = CompactionConfig(lod=False)
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

WRITER = textwrap.dedent("""
    import os, sys
    from telemetry import Writer, WriterConfig
    root, rank, steps, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    w = Writer(root, "r", rank=rank, attempt=0, writer_config=WriterConfig(
        flush_interval_s=0.02, segment_interval_s=0.0, close_timeout_s=20, compact_on_close=False,
        live_compaction=False))
    for s in range(steps):
        w.metric(s, "loss", float(s))
        if s % 4 == 3:
            assert w.flush()  # a segment per flush (segment_interval_s=0): on storage from here on
            with open(progress + ".tmp", "w") as fh:
                fh.write(str(s))
            os.replace(progress + ".tmp", progress)
    w.close()
""")


def manifest_entries(root: str) -> list[dict]:
    with open(os.path.join(root, MANIFEST_FILE)) as fh:
        return json.load(fh)["files"]


def metrics_by_manifest(root: str, run: str = "r") -> dict[tuple[int, int], int]:
    """(rank, step) -> rows, reading exactly the metric files the manifest lists, as an external engine would."""
    paths = [os.path.join(root, e["path"]) for e in manifest_entries(root)
             if e["table"] == "metrics" and e["run_id"] == run]
    missing = [p for p in paths if not os.path.exists(p)]
    assert not missing, f"the manifest names files that are gone: {missing}"
    if not paths:
        return {}
    rows = duckdb.sql(f"SELECT rank, step, count(*) AS n FROM read_parquet({paths!r}, union_by_name=true) "
                      "GROUP BY rank, step").fetchall()
    return {(r, s): n for r, s, n in rows}


def read_progress(path: str) -> int:
    try:
        with open(path) as fh:
            return int(fh.read())
    except FileNotFoundError:
        return -1


def test_after_every_live_pass_the_manifest_lists_each_row_written_so_far_once_and_no_missing_file(tmp_path,
                                                                                                 monkeypatch):
    archive = str(tmp_path / "archive")

    def collect_then_check(fs, root, run_id, grace_s):  # mid-pass too: what a grace of 0 deletes is unlisted first
        done = collect_garbage(fs, root, run_id, grace_s)
        gone = [e["path"] for e in manifest_entries(archive) if not os.path.exists(os.path.join(archive, e["path"]))]
        assert not gone, f"the manifest named files the pass deleted: {gone}"
        return done

    monkeypatch.setattr(live_compactor, "collect_garbage", collect_then_check)
    write_manifest(archive)  # an archive that has a manifest (empty yet): its readers read the list
    ranks, steps = 3, 240
    progress = [str(tmp_path / f"progress-{k}") for k in range(ranks)]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, archive, str(k), str(steps), progress[k]], env=env)
               for k in range(ranks)]
    fs, root = open_fs(archive)
    passes = swapped = 0
    try:
        while any(w.poll() is None for w in writers) or passes < 3:
            flushed = [read_progress(p) for p in progress]  # before the pass: these rows are in segments
            report = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
            assert not report.problems, report.problems
            passes += 1
            swapped += report.files_written
            got = metrics_by_manifest(archive)
            assert set(got.values()) <= {1}, "a row the manifest lists twice (a replaced part still listed)"
            for k in range(ranks):
                missing = [s for s in range(flushed[k] + 1) if (k, s) not in got]
                assert not missing, f"rank {k}: flushed steps missing from the manifest's files: {missing[:5]}"
            time.sleep(0.05)
    finally:
        for w in writers:
            w.wait(timeout=120)
    assert all(w.returncode == 0 for w in writers)
    assert swapped >= 3 and passes >= 3, (swapped, passes)
    compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)  # the writers are gone: their last parts too
    assert metrics_by_manifest(archive) == {(k, s): 1 for k in range(ranks) for s in range(steps)}
    assert all(os.path.exists(os.path.join(archive, e["path"])) for e in manifest_entries(archive))


# ---- a pass over one run of a many-run archive reads that run alone --------------------------------------

class CountingMemoryFS(MemoryFileSystem):
    """memory:// that records every file it opens or reads whole (footer reads do one or the other)."""

    protocol = "manifestcount"
    read: list[str] = []

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001 - fsspec's signature
        if "r" in mode:
            CountingMemoryFS.read.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):  # noqa: ANN001 - fsspec's signature
        CountingMemoryFS.read.append(self._strip_protocol(path))
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("manifestcount", CountingMemoryFS, clobber=True)


def put_run(fs, root: str, run: str, *, ranks: int = 2, segments: int = 3, first_seq: int = 0) -> None:
    """Closed writers' segments of a run: a runs row and `segments` metric parts per rank."""
    atomic_write_bytes(fs, join(root, ROOT_FILE), b'{"format_version": 1}')
    rows = pa.Table.from_pylist([{"run_id": run, "name": run, "status": "running", "created_at": T0,
                                  "updated_at": T0}], schema=schema("runs"))
    atomic_write_bytes(fs, join(root, segment_path("runs", run, 0, 0, first_seq)),
                       encodings.segment_bytes(rows).to_pybytes())
    for rank in range(ranks):
        for s in range(first_seq, first_seq + segments):
            step = np.arange(s * 10, s * 10 + 10, dtype=np.int64)
            data = pa.table({"run_id": [run] * 10, "attempt": pa.array([0] * 10, pa.int32()),
                             "rank": pa.array([rank] * 10, pa.int32()), "step": step, "name": ["loss"] * 10,
                             "value": np.ones(10), "wall_time": pa.array([T0] * 10, pa.timestamp("us", tz="UTC"))},
                            schema=schema("metrics"))
            atomic_write_bytes(fs, join(root, segment_path("metrics", run, 0, rank, s)),
                               encodings.segment_bytes(data).to_pybytes())


def without_time(manifest: dict) -> dict:
    return {e["path"]: e for e in manifest["files"]}


def test_a_pass_over_one_run_opens_no_footer_of_the_other_runs_and_leaves_their_entries_as_they_were():
    url = f"manifestcount://live-{uuid.uuid4().hex[:8]}"
    fs, root = open_fs(url)
    for run in ("a", "b", "c"):
        put_run(fs, root, run)
    before = without_time(write_manifest(url))
    put_run(fs, root, "b", first_seq=3)  # the live run wrote on
    CountingMemoryFS.read.clear()
    report = compact_live_run(fs, root, "b", policy=EAGER, config=NO_LOD)
    assert not report.problems and report.files_written >= 2  # metrics and runs, parts swapped and removed
    others = [p for p in CountingMemoryFS.read if "run_id=a/" in p or "run_id=c/" in p or "/runs/a." in p
              or "/runs/c." in p or "compactions/a" in p or "compactions/c" in p]
    assert others == [], "a pass over run b read files of other runs"
    after = json.loads(fs.cat_file(join(root, MANIFEST_FILE)))
    entries = without_time(after)
    assert {p: e for p, e in entries.items() if "run_id=b/" not in p} == \
        {p: e for p, e in before.items() if "run_id=b/" not in p}
    assert report.manifest_footers == report.files_written, "footers of the files the pass wrote, no other"
    # the same entries a rebuild that reads every footer gives (rows, sizes, footer facts)
    assert entries == without_time(write_manifest(url, index_runs=False))
    assert all(fs.exists(join(root, p)) for p in entries)
    assert sum(e["rows"] for p, e in entries.items() if p.startswith("metrics/run_id=b/")) == 2 * 6 * 10


def test_follow_rewrites_the_manifest_once_per_pass_for_the_runs_it_compacted(tmp_path):
    url = str(tmp_path / "archive")
    fs, root = open_fs(url)
    for run in ("a", "b"):
        put_run(fs, root, run)
    write_manifest(url)
    for run in ("a", "b"):
        put_run(fs, root, run, first_seq=3)
    report = follow(url, threading.Event(), policy=EAGER, config=NO_LOD, max_passes=1)
    assert not report.problems and report.files_written >= 4
    entries = without_time(json.loads(fs.cat_file(join(root, MANIFEST_FILE))))
    assert entries == without_time(write_manifest(url, index_runs=False))
    assert not any("/part-" in p and p.startswith("metrics/") for p in entries)  # replaced, deleted (grace 0)


# ---- an archive without a manifest stays without one; a manifest failure never stops compaction ----------

def cfg() -> WriterConfig:
    return WriterConfig(flush_interval_s=0.02, segment_interval_s=0.0, close_timeout_s=20, compact_on_close=False,
                        live_compaction=False)


def write_six_parts(archive: str) -> Writer:
    """Run r's writer, still open, after 30 steps of loss flushed into six parts (a flush every 5 steps)."""
    w = Writer(archive, "r", writer_config=cfg())
    for s in range(30):
        w.metric(s, "loss", 1.0)
        if s % 5 == 4:
            w.flush()
    return w


def test_an_archive_without_a_manifest_gets_none_from_the_live_compactor(archive):
    w = write_six_parts(archive)
    fs, root = open_fs(archive)
    live = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
    assert live.files_written and not live.problems
    w.close()
    assert follow(archive, threading.Event(), policy=EAGER, config=NO_LOD, max_passes=1).files_written
    assert not os.path.exists(os.path.join(archive, MANIFEST_FILE))


def test_a_manifest_that_cannot_be_rewritten_is_reported_and_compaction_goes_on(archive):
    write_six_parts(archive).close()
    os.makedirs(os.path.join(archive, "_manifest"), exist_ok=True)
    with open(os.path.join(archive, MANIFEST_FILE), "w") as fh:  # not JSON: every reader of it fails
        fh.write("{not json")
    fs, root = open_fs(archive)
    report = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
    assert report.parts_merged >= 6 and report.removed >= 5
    assert [p for p in report.problems if p.startswith("manifest not rewritten")], report.problems


@pytest.mark.parametrize("grace_s", [0.0, 3600.0])
def test_replaced_parts_leave_the_manifest_at_the_swap_whatever_the_grace_period(archive, grace_s):
    write_six_parts(archive).close()
    write_manifest(archive)
    fs, root = open_fs(archive)
    policy = LivePolicy(interval_s=0.0, min_parts=1, fanout=2, settle_s=0.0, grace_s=grace_s)
    assert compact_live_run(fs, root, "r", policy=policy, config=NO_LOD).parts_merged >= 6
    assert metrics_by_manifest(archive) == {(0, s): 1 for s in range(30)}


def test_a_refreshed_manifest_leaves_out_staged_and_temp_files_and_compact_files_without_a_record(archive):
    write_six_parts(archive).close()
    write_manifest(archive)
    fs, root = open_fs(archive)
    assert compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD).parts_merged >= 6
    folder = os.path.join(archive, "metrics", "run_id=r")
    (compact,) = [f for f in os.listdir(folder) if f.startswith("compact-")]
    orphan = compact.rsplit("-", 1)[0] + "-" + "f" * 16 + ".parquet"  # a compaction that died before its record
    shutil.copy(os.path.join(folder, compact), os.path.join(folder, orphan))
    temps = {temp_name(compact, "abc"), compact.replace(".parquet", ".tmp-abc.parquet")}
    for temp in temps:
        shutil.copy(os.path.join(folder, compact), os.path.join(folder, temp))
    staged = os.path.join(archive, staged_path("metrics", "r", 0, 0, 99))
    os.makedirs(os.path.dirname(staged), exist_ok=True)
    shutil.copy(os.path.join(folder, compact), staged)
    w = Writer(archive, "r", attempt=0, writer_config=cfg())  # writes on: a new part makes the pass refresh
    w.metric(30, "loss", 1.0)
    w.flush()
    compact_live_run(fs, root, "r", policy=LivePolicy(min_parts=100, settle_s=0.0, grace_s=3600), config=NO_LOD)
    listed = {e["path"].rsplit("/", 1)[-1] for e in manifest_entries(archive) if e["table"] == "metrics"}
    assert compact in listed and not ({orphan, os.path.basename(staged)} | temps) & listed
    assert metrics_by_manifest(archive) == {(0, s): 1 for s in range(31)}
    w.close()


def test_a_writer_closing_its_run_leaves_the_manifest_listing_its_last_segments(tmp_path):
    root = str(tmp_path / "a")
    cfg = WriterConfig(flush_interval_s=0.05, segment_interval_s=3600, live_compaction=False)
    w = Writer(root, run="r", writer_config=cfg)
    w.metrics(0, {"loss": 1.0})
    w.flush(10)
    write_manifest(root)  # an archive that has a manifest (e.g. published or indexed once)
    for step in range(1, 50):
        w.metrics(step, {"loss": 1.0 / step})
    w.close()  # the close hook: too few rows to compact, but the manifest must list the final segments
    assert sum(metrics_by_manifest(root).values()) == 50
