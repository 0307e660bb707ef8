"""Compaction: parts swapped for sorted compact files through records, without losing or doubling a row."""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid

import pyarrow.parquet as pq

from data_schema import staged_path
from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.compaction import CompactionConfig, compact
from telemetry.maintain.recovery import recover
from telemetry.store import staging
from telemetry.store.fs import open_fs
from telemetry.store.liveness import read_records


def cfg(**kw) -> WriterConfig:
    base = {"flush_interval_s": 0.05, "segment_interval_s": 3600, "segment_rows": 500, "close_timeout_s": 20,
            "compact_on_close": False}
    return WriterConfig(**(base | kw))


def write_run(root: str, run: str = "r", steps: int = 1000, attempt: int | None = None, **kw) -> Writer:
    w = Writer(root, run, attempt=attempt, writer_config=cfg(**kw))
    for s in range(steps):
        w.metrics(s, {"loss": 3.0 - s / 1000 if s % 97 else float("nan"), "lr": 1e-3}, wall_time=1.7e9 + s * 0.3)
        if s % 300 == 0:
            w.event("note", step=s, message=f"at {s}")
            w.flush()  # several segments per table
    w.system("gpu.util", 50.0)
    w.close()
    return w


def rows(root: str, table: str = "metrics", run: str = "r") -> list[tuple]:
    a = Archive(root)
    try:
        t = a.sql(f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = '{run}'")
    finally:
        a.close()
    def key(v):  # NaN != NaN: compare it by name
        return "NaN" if isinstance(v, float) and v != v else v

    return sorted((tuple(key(v) for v in r.values()) for r in t.to_pylist()), key=repr)


def files(root: str, table: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, table, "run_id=*", pattern)))


def test_compaction_swaps_parts_for_sorted_compact_files_without_losing_or_doubling_rows(archive):
    write_run(archive)
    parts_before = files(archive, "metrics", "part-*")
    assert len(parts_before) >= 4
    before = {t: rows(archive, t) for t in ("metrics", "events", "attempts", "runs", "system")}
    report = compact(archive, "r", grace_s=3600)
    assert not report.problems and report.files_written >= 5 and report.lod_files == 1
    for table, want in before.items():
        assert rows(archive, table) == want, table
    (compact_file,) = files(archive, "metrics", "compact-*")
    assert files(archive, "metrics", "part-*") == parts_before  # kept for readers of older snapshots
    t = pq.read_table(compact_file)
    keys = list(zip(t["name"].to_pylist(), t["step"].to_pylist(), strict=True))
    assert keys == sorted(keys), "compacted metrics are sorted by (name, step)"
    md = pq.ParquetFile(compact_file).metadata
    col = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)}
    assert col["value"].compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" in col["value"].encodings
    assert "DELTA_BINARY_PACKED" in col["step"].encodings and "DELTA_BINARY_PACKED" in col["wall_time"].encodings
    assert any("DICTIONARY" in e for e in col["name"].encodings)
    assert len(read_records(*_fs(archive), run_id="r")) == report.files_written


def _fs(root: str):
    from telemetry.store.fs import open_fs

    return open_fs(root)


def test_a_compact_file_without_its_record_is_invisible(archive):
    write_run(archive)
    want = rows(archive)
    compact(archive, "r", grace_s=3600)
    shutil.rmtree(os.path.join(archive, "_manifest", "compactions"))  # died between file and record
    assert rows(archive) == want


def test_racing_compactions_never_double_rows(archive):
    write_run(archive)
    want = rows(archive)
    compact(archive, "r", grace_s=3600)
    # a second compaction of the same parts, recorded later: it must be rejected
    fs, root = _fs(archive)
    for rec in read_records(fs, root, run_id="r"):
        uid2 = "f" * 16
        twin = rec["file"].replace(rec["uid"], uid2)
        shutil.copy(os.path.join(root, rec["file"]), os.path.join(root, twin))
        body = {k: v for k, v in rec.items() if k != "_rel"} | {"file": twin, "uid": uid2,
                                                                  "created_at": "2999-01-01T00:00:00+00:00"}
        with open(os.path.join(root, "_manifest", "compactions", "r", f"{rec['table']}-{uid2}.json"), "w") as fh:
            json.dump(body, fh)
    assert rows(archive) == want


def test_replaced_parts_go_after_the_grace_period_and_recovery_never_converts_a_compacted_batch_again(archive):
    write_run(archive)
    want = rows(archive)
    compact(archive, "r", grace_s=3600)
    top = max(files(archive, "metrics", "part-*"))
    report = compact(archive, "r", grace_s=0)  # a later run: nothing new, the old parts go
    assert report.removed > 0
    assert files(archive, "metrics", "part-*") == [top], "only the empty watermark of the highest seq stays"
    assert pq.read_metadata(top).num_rows == 0
    assert rows(archive) == want
    # a staged batch that a crash left behind after its segment was written (seq 2 <= watermark)
    leftover = os.path.join(archive, staged_path("metrics", "r", 0, 0, 2))
    os.makedirs(os.path.dirname(leftover), exist_ok=True)
    import pyarrow as pa

    staged = staging.staged_schema("metrics")
    batch = pa.table({"step": pa.array([5], pa.int64()), "name": ["loss"], "value": [1.0],
                      "wall_time": pa.array([0], pa.int64()).cast(staged.field("wall_time").type)}, schema=staged)
    with open(leftover, "wb") as fh:
        fh.write(staging.encode_staged(batch, run_id="r", attempt=0, rank=0).to_pybytes())
    rec = recover(archive)
    assert rec.segments_written == 0 and rec.staged_deleted == 1
    assert rows(archive) == want
    # attempt and seq numbers are never reused after compaction
    w = Writer(archive, "r", writer_config=cfg())
    assert w.attempt == 1
    w.close()


def test_segments_of_a_live_writer_are_not_compacted(archive):
    w = Writer(archive, "live", writer_config=cfg(segment_interval_s=0.0))
    for s in range(100):
        w.metric(s, "loss", 1.0)
    assert w.flush()
    w.flush()
    report = compact(archive, "live", grace_s=3600, recover_first=False)
    assert report.skipped_live > 0 and not files(archive, "metrics", "compact-*")
    w.close()
    assert sorted(r[2] for r in rows(archive, run="live")) == list(range(100))


def test_close_compacts_a_large_enough_run_and_builds_its_lod(archive):
    write_run(archive, compact_on_close=True, compact_min_rows=100)
    assert files(archive, "metrics", "compact-*")
    assert glob.glob(os.path.join(archive, "metrics_lod", "run_id=r", "lod-*.parquet"))
    a = Archive(archive)
    assert "r" in a.snapshot.lod
    assert a.curve("r", "loss", buckets=10)["count"].sum() == 1000


def test_plain_values_and_millisecond_wall_time_are_options(archive):
    write_run(archive, steps=300)
    exact = rows(archive)
    compact(archive, "r", grace_s=3600, config=CompactionConfig(value_encoding="PLAIN", wall_time_resolution_us=1000))
    (f,) = files(archive, "metrics", "compact-*")
    col = pq.ParquetFile(f).metadata.row_group(0)
    value = next(col.column(i) for i in range(col.num_columns) if col.column(i).path_in_schema == "value")
    assert "BYTE_STREAM_SPLIT" not in value.encodings
    got = rows(archive)
    assert [r[:5] for r in got] == [r[:5] for r in exact]  # everything but wall_time is exact
    wall = pq.read_table(f, columns=["wall_time"]).column(0).cast("int64").to_numpy()
    assert (wall % 1000 == 0).all()


def test_compact_with_grace_zero_removes_replaced_files_in_the_same_pass(archive):
    write_run(archive)
    want = rows(archive)
    parts = files(archive, "metrics", "part-*")
    report = compact(archive, "r", grace_s=0)
    assert report.files_written and report.removed >= len(parts) - 1, report
    # one pass: only the empty watermark of the highest seq is left of the parts, in every table
    left = files(archive, "metrics", "part-*")
    assert left == [max(parts)] and pq.read_metadata(left[0]).num_rows == 0
    assert all(pq.read_metadata(p).num_rows == 0 for t in ("events", "system") for p in files(archive, t, "part-*"))
    assert all(rec["gc_done"] for rec in read_records(*open_fs(archive), run_id="r"))
    assert len(glob.glob(os.path.join(archive, "metrics_lod", "run_id=r", "*.parquet"))) == 1
    assert rows(archive) == want
    again = compact(archive, "r", grace_s=0)  # nothing was left for a second pass
    assert again.removed == 0 and again.files_written == 0


def test_verify_stays_clean_with_a_manifest_before_and_after_the_grace_period(archive):
    from telemetry.maintain.file_integrity import verify
    from telemetry.maintain.manifest import write_manifest

    write_run(archive)
    compact(archive, "r", grace_s=3600)
    write_manifest(archive)  # the replaced parts are still on disk, but not listed
    report = verify(archive)
    assert report.ok, report.problems
    assert report.rows_by_table["metrics"] == 2000
    compact(archive, "r", grace_s=0)  # now they go, while the manifest still names them
    report = verify(archive)
    assert report.ok, report.problems
    assert report.rows_by_table["metrics"] == 2000


def test_compaction_and_lod_work_on_an_object_store(tmp_path):
    url = f"memory://compaction-{uuid.uuid4().hex[:8]}"
    w = Writer(url, "r", writer_config=cfg())
    for s in range(3000):
        w.metric(s, "loss", float("inf") if s == 1234 else 1.0 + (s == 2000))
        if s % 1000 == 0:
            w.flush()
    w.close()
    report = compact(url, "r", grace_s=0)
    assert report.files_written and report.lod_files == 1 and not report.problems
    a = Archive(url, cache_dir=str(tmp_path / "cache"))
    assert "r" in a.snapshot.lod and not any(f.key.kind == "segment" and f.rows for f in a.snapshot.files["metrics"])
    c = a.curve("r", "loss", buckets=7)
    assert c["count"].sum() == 3000 and c["max"].max() == 2.0 and c["posinf_count"].sum() == 1


def test_compacted_files_keep_engine_compatible_settings_microsecond_times_and_string_partitions(archive):
    import pyarrow.dataset as ds

    write_run(archive, steps=300)
    compact(archive, "r", grace_s=0)  # the replaced parts go at once: the folder holds compact files and a watermark
    (f,) = files(archive, "metrics", "compact-*")
    md = pq.ParquetFile(f)
    wall = md.schema_arrow.field("wall_time").type
    assert str(wall) == "timestamp[us, tz=UTC]", "Spark and Trino read microseconds, not nanoseconds"
    assert "timeUnit=microseconds" in str(md.schema.column(md.schema_arrow.get_field_index("wall_time")).logical_type)
    assert md.metadata.format_version in ("2.6", "2.4")
    # engines that read hive folders see run_id as a string (never purely numeric), the same rows as DuckDB
    data = ds.dataset(os.path.join(archive, "metrics"), format="parquet", partitioning="hive").to_table()
    assert str(data.schema.field("run_id").type) in ("string", "dictionary<values=string, indices=int32, ordered=0>")
    assert data.num_rows == len(rows(archive))


def test_readers_running_during_compaction_see_every_row_exactly_once(archive):
    import threading

    write_run(archive, steps=3000)
    want = rows(archive)
    counts: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def compactor() -> None:
        try:
            compact(archive, "r", grace_s=3600)
            compact(archive, "r", grace_s=3600)  # nothing new: records and LOD are re-read, not rewritten
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=compactor)
    t.start()
    while not done.is_set() or len(counts) < 3:
        a = Archive(archive, recover=False)
        try:
            counts.append(a.sql("SELECT count(*) AS n FROM metrics WHERE run_id = 'r'").column(0)[0].as_py())
        finally:
            a.close()
    t.join()
    assert not errors and files(archive, "metrics", "compact-*")
    assert set(counts) == {len(want)}, f"a reader saw {sorted(set(counts))} rows, not {len(want)}"
    assert rows(archive) == want
