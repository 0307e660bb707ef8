"""Metric wall times are stored to the millisecond by default (WriterConfig.metrics_wall_time_resolution_us):
nearest multiple, halves up, the same in segments, compacted files and imports; 1 keeps microseconds;
system and events keep microseconds."""

from __future__ import annotations

import datetime as dt
import glob
import os

import pyarrow as pa
import pytest

from telemetry import Archive, Writer, WriterConfig
from telemetry.importers import ImportedRun, write_run
from telemetry.importers._common import metrics_table
from telemetry.maintain.compaction import CompactionConfig, compact

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
US = dt.timedelta(microseconds=1)
# (step, wall time written, wall time stored at 1 ms): below, at and above half a millisecond
POINTS = [
    (0, T0 + 123_456 * US, T0 + 123_000 * US),
    (1, T0 + 1_000_499 * US, T0 + 1_000_000 * US),
    (2, T0 + 2_000_500 * US, T0 + 2_001_000 * US),   # a half rounds up
    (3, T0 + 3_999_501 * US, T0 + 4_000_000 * US),   # across a second
    (4, T0 + 5_000_000 * US, T0 + 5_000_000 * US),   # already whole: unchanged
]


def cfg(**kw) -> WriterConfig:
    base = {"flush_interval_s": 0.05, "segment_interval_s": 3600, "segment_rows": 3, "close_timeout_s": 20,
            "compact_on_close": False}
    return WriterConfig(**(base | kw))


def write(root: str, **kw) -> None:
    """Each point through every metrics path: metric() with Unix seconds (the columnar path) and
    with a datetime (the point-by-point path), metrics(), and row("metrics"); plus a system sample
    and an event at the same µs time."""
    w = Writer(root, "r", writer_config=cfg(**kw))
    for step, t, _ in POINTS:
        w.metric(step, "dt", 1.0, wall_time=t)
        w.flush()  # a datetime sends its whole batch point by point: keep the float batch apart
        w.metric(step, "secs", 1.0, wall_time=t.timestamp())
        w.metrics(step, {"multi_a": 1.0, "multi_b": 2.0}, wall_time=t.timestamp())
        w.row("metrics", step=step, name="row", value=1.0, wall_time=t)
        w.system("gpu.util", 1.0, wall_time=t)
        w.event("note", step=step, wall_time=t)
        w.flush()  # several segments
    w.close()


def sql_times(root: str, table: str = "metrics") -> dict[tuple, dt.datetime]:
    """(step, name) -> wall_time of `table`, read through Archive SQL."""
    a = Archive(root)
    try:
        got = a.sql(f"SELECT step, name, wall_time FROM {table} WHERE run_id = 'r'").to_pylist()
    finally:
        a.close()
    return {(r["step"], r["name"]): r["wall_time"] for r in got}


def all_times(root: str, table: str) -> list[dt.datetime]:
    a = Archive(root)
    try:
        return sorted(a.sql(f"SELECT wall_time FROM {table} WHERE run_id = 'r'").column(0).to_pylist())
    finally:
        a.close()


def compacted(root: str) -> None:
    parts = glob.glob(os.path.join(root, "metrics", "run_id=r", "part-*"))
    assert len(parts) >= 2
    report = compact(root, "r", grace_s=3600, config=CompactionConfig(lod=False))
    assert report.files_written and glob.glob(os.path.join(root, "metrics", "run_id=r", "compact-*"))


def test_metric_wall_times_read_back_rounded_to_the_millisecond_before_and_after_compaction(archive):
    write(archive)
    want = {(step, name): stored for step, _, stored in POINTS for name in ("dt", "secs", "multi_a", "multi_b", "row")}
    before = sql_times(archive)
    assert before == want
    compacted(archive)
    after = sql_times(archive)
    assert after == before  # compaction copies the stored value: nothing moves by a millisecond
    assert all(t.microsecond % 1000 == 0 for t in after.values())


def test_system_and_event_wall_times_keep_microseconds(archive):
    write(archive)
    written = [t for _, t, _ in POINTS]
    assert all_times(archive, "events") == written
    assert all_times(archive, "system") == written


def test_resolution_1_keeps_microseconds(archive):
    write(archive, metrics_wall_time_resolution_us=1)
    got = sql_times(archive)
    assert got == {(step, name): t for step, t, _ in POINTS for name in ("dt", "secs", "multi_a", "multi_b", "row")}
    compacted(archive)
    assert sql_times(archive) == got


def test_other_resolutions_round_to_their_multiple(archive):
    write(archive, metrics_wall_time_resolution_us=1_000_000)
    got = sql_times(archive)
    seconds = {0: T0, 1: T0 + dt.timedelta(seconds=1), 2: T0 + dt.timedelta(seconds=2),
               3: T0 + dt.timedelta(seconds=4), 4: T0 + dt.timedelta(seconds=5)}
    assert got == {(step, name): seconds[step] for step, _, _ in POINTS
                   for name in ("dt", "secs", "multi_a", "multi_b", "row")}


def test_compaction_option_still_rounds_further(archive):
    write(archive)
    compact(archive, "r", grace_s=3600, config=CompactionConfig(lod=False, wall_time_resolution_us=1_000_000))
    assert all(t.microsecond == 0 for t in sql_times(archive).values())
    assert all(t.microsecond == 0 for t in all_times(archive, "system"))


@pytest.mark.parametrize("bad", [0, -1000, 1.5, 1000.0, True, "1000", None])
def test_bad_resolutions_are_refused_with_a_clear_message(archive, bad):
    with pytest.raises(ValueError, match=r"WriterConfig\.metrics_wall_time_resolution_us must be an integer "
                                         r"number of microseconds >= 1"):
        WriterConfig(metrics_wall_time_resolution_us=bad)
    c = WriterConfig()
    c.metrics_wall_time_resolution_us = bad  # set after construction: the Writer checks it again
    with pytest.raises(ValueError, match="metrics_wall_time_resolution_us"):
        Writer(archive, "r", writer_config=c)
    with pytest.raises(ValueError, match="metrics_wall_time_resolution_us"):
        write_run(archive, _imported(), metrics_wall_time_resolution_us=bad)


def _imported() -> ImportedRun:
    stamps = pa.array([t for _, t, _ in POINTS] + [None], pa.timestamp("us", tz="UTC"))
    m = metrics_table(list(range(len(POINTS) + 1)), ["loss"] * (len(POINTS) + 1), [1.0] * (len(POINTS) + 1), stamps)
    return ImportedRun(run_id="r", name="r", source="csv", source_path="/src/r.csv", metrics=m)


def test_imports_store_metric_wall_times_like_the_writer_and_reimport_the_same(archive):
    write_run(archive, _imported())
    first = sql_times(archive)
    assert first == {**{(step, "loss"): stored for step, _, stored in POINTS}, (len(POINTS), "loss"): None}
    write_run(archive, _imported())
    assert sql_times(archive) == first
    write_run(archive, _imported(), metrics_wall_time_resolution_us=1)
    assert sql_times(archive) == {**{(step, "loss"): t for step, t, _ in POINTS},
                                             (len(POINTS), "loss"): None}
