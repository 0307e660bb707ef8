"""Small files kept in memory (telemetry.read.small_files): a live run's many raw segments are read once into
an in-memory table, and every query answers exactly what reading the files answers, through refreshes,
compaction and files that do not fit."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from data_schema import schema
from data_schema.layout import ROOT_FILE, join, segment_path
from telemetry import compact
from telemetry.read import small_files
from telemetry.read.archive import Archive
from telemetry.store import encodings
from telemetry.store.fs import atomic_write_bytes, open_fs

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def put(fs, root: str, rel: str, table: pa.Table) -> None:
    atomic_write_bytes(fs, join(root, rel), encodings.segment_bytes(table).to_pybytes())


def write_segments(fs, root: str, run: str, *, ranks: int, intervals: int, first: int = 0, seed: int = 0,
                   extra_column: bool = False) -> None:
    """`ranks` x `intervals` raw metric segments (10 steps of loss and step_time each) and a ranks row per rank."""
    rng = np.random.default_rng(seed)
    atomic_write_bytes(fs, join(root, ROOT_FILE), b'{"format_version": 1}')
    for rank in range(ranks):
        if first == 0:
            put(fs, root, segment_path("ranks", run, 0, rank, 0), pa.Table.from_pylist(
                [{"run_id": run, "attempt": 0, "rank": rank, "host": f"h{rank // 8}"}], schema=schema("ranks")))
        for i in range(first, first + intervals):
            step = np.repeat(np.arange(i * 10, i * 10 + 10, dtype=np.int64), 2)
            n = len(step)
            cols = {"run_id": [run] * n, "attempt": pa.array([0] * n, pa.int32()),
                    "rank": pa.array([rank] * n, pa.int32()), "step": step, "name": ["loss", "step_time"] * (n // 2),
                    "value": rng.random(n), "wall_time": pa.array([T0] * n, pa.timestamp("us", tz="UTC"))}
            table = pa.table(cols, schema=schema("metrics"))
            if extra_column:
                table = table.append_column("note", pa.array(["x"] * n))
            put(fs, root, segment_path("metrics", run, 0, rank, i), table)


STRAGGLER = ("SELECT rank, count(*) AS n, round(sum(value), 9) AS s FROM metrics WHERE name = 'step_time' "
             "GROUP BY rank ORDER BY rank")


def answers(a: Archive) -> tuple:
    curve = a.curve("r", "loss", buckets=7)
    return (a.sql(STRAGGLER).to_pylist(), curve[["count", "min", "max"]].round(12).to_dict("list"),
            round(float(a.metrics("r", "loss")["value"].sum()), 9), a.runs("r")[["steps", "ranks"]].to_dict("list"))


def reference(url: str, monkeypatch) -> Archive:
    """A reader of the same archive that reads every small file as a file: what the answers must equal."""
    monkeypatch.setattr(small_files, "MIN_FILES", 10**9)
    return Archive(url)


def test_many_small_files_are_read_once_and_answer_what_the_files_answer(tmp_path, monkeypatch):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_segments(fs, root, "r", ranks=16, intervals=2)
    a = Archive(url)
    got = answers(a)
    assert a._small.files_loaded == 32 + 16  # the metric segments and the ranks rows, once
    assert answers(a) == got and a._small.files_loaded == 48  # again: nothing read again
    ref = reference(url, monkeypatch)
    assert answers(ref) == got and ref._small.files_loaded == 0


def test_a_refresh_reads_only_the_new_small_files_and_compaction_drops_the_old_rows(tmp_path, monkeypatch):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_segments(fs, root, "r", ranks=8, intervals=3)
    a = Archive(url)
    answers(a)
    assert a._small.files_loaded == 24  # the 8 ranks rows are too few to keep: read as files
    write_segments(fs, root, "r", ranks=8, intervals=2, first=3, seed=1)
    assert a.refresh()
    got = answers(a)
    assert a._small.files_loaded == 24 + 16
    assert answers(reference(url, monkeypatch)) == got
    monkeypatch.undo()
    compact(url, "r", grace_s=0)  # the segments are replaced by a compact file (kept as a file)
    assert a.refresh()
    assert answers(a) == got  # no row twice, none missed
    a.refresh()
    a.sql("SELECT 1 FROM metrics LIMIT 1")
    left = a.sql('SELECT count(*) AS n FROM "_small_metrics"').column("n")[0].as_py()
    assert left == 0  # the replaced segments' rows were dropped once their files left the snapshot


def test_files_with_columns_outside_the_schema_are_read_as_files(tmp_path, monkeypatch):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_segments(fs, root, "r", ranks=4, intervals=4)
    write_segments(fs, root, "r", ranks=4, intervals=2, first=4, seed=2, extra_column=True)
    a = Archive(url)
    got = answers(a)
    assert a._small.files_loaded == 16  # the 8 files with a `note` column stay files
    assert a.sql("SELECT count(*) AS n FROM metrics WHERE note = 'x'").column("n")[0].as_py() == 4 * 2 * 20
    assert answers(reference(url, monkeypatch)) == got


def test_a_bound_on_memory_reads_the_files_beyond_it_as_files(tmp_path, monkeypatch):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_segments(fs, root, "r", ranks=8, intervals=4)
    monkeypatch.setattr(small_files, "MAX_TOTAL_BYTES", 20_000)
    a = Archive(url)
    got = answers(a)
    assert 0 < a._small.files_loaded < 32
    assert answers(reference(url, monkeypatch)) == got


def test_two_runs_in_memory_each_query_reads_its_own_runs_rows(tmp_path, monkeypatch):
    url = str(tmp_path / "a")
    fs, root = open_fs(url)
    write_segments(fs, root, "small", ranks=16, intervals=2)
    write_segments(fs, root, "big", ranks=16, intervals=3, seed=3)
    a = Archive(url)
    # the second run's query names its own files, the other run's being in memory too: once the
    # longer list (IN), once the shorter (NOT IN)
    got = [(a.metrics(r, "loss")["value"].sum(), len(a.metrics(r))) for r in ("small", "big", "small")]
    assert a._small.files_loaded == 32 + 48
    ref = reference(url, monkeypatch)
    assert got == [(ref.metrics(r, "loss")["value"].sum(), len(ref.metrics(r))) for r in ("small", "big", "small")]
    assert [n for _, n in got] == [16 * 2 * 20, 16 * 3 * 20, 16 * 2 * 20]
