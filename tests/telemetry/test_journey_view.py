"""journey_metrics from the files' footers: the same rows as the scanning anti join, and no join at all
when every run has a single attempt (the common case, and the cost of cross-run queries)."""

from __future__ import annotations

import pandas as pd

from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.compaction import compact
from telemetry.read.views import JOURNEY_SQL, journey_sql

CFG = WriterConfig(flush_interval_s=0.05, segment_interval_s=3600, segment_rows=300, close_timeout_s=20,
                   compact_on_close=False)


def write(url: str, run: str, steps: range, value: float) -> None:
    with Writer(url, run=run, writer_config=CFG) as w:
        for s in steps:
            w.metrics(s, {"loss": value + s, "lr": 1e-3}, wall_time=1.7e9 + s)
            if s % 250 == 0:
                w.flush()


def journey_rows(a: Archive, source: str) -> list[tuple]:
    t = a.sql(f"SELECT run_id, attempt, rank, step, name, value FROM ({source}) ORDER BY ALL")
    return [tuple(r.values()) for r in t.to_pylist()]


def test_journey_view_from_footers_keeps_exactly_the_rows_of_the_scanning_definition(tmp_path):
    url = str(tmp_path / "a")
    write(url, "single", range(0, 900), 1.0)
    write(url, "resumed", range(0, 700), 10.0)
    write(url, "resumed", range(400, 1000), 100.0)   # attempt 1 takes over from step 400
    write(url, "resumed", range(800, 1200), 1000.0)  # attempt 2 from step 800
    for compacted in (False, True):
        if compacted:
            compact(url, "resumed", grace_s=3600)
        a = Archive(url)
        try:
            view = a.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'journey_metrics'").column(0)[0].as_py()
            assert "spans AS" not in view, "footers tell the spans: the view must not scan for them"
            assert journey_rows(a, "SELECT * FROM journey_metrics") == journey_rows(a, JOURNEY_SQL)
            got = a.sql("SELECT attempt, min(step) AS lo, max(step) AS hi FROM journey_metrics "
                        "WHERE run_id = 'resumed' AND name = 'loss' GROUP BY attempt ORDER BY attempt").to_pylist()
            assert [(r["attempt"], r["lo"], r["hi"]) for r in got] == [(0, 0, 399), (1, 400, 799), (2, 800, 1199)]
            assert a.sql("SELECT count(*) FROM journey_metrics WHERE run_id = 'single'").column(0)[0].as_py() == 1800
        finally:
            a.close()


def test_an_archive_of_single_attempt_runs_reads_its_journey_without_a_join(tmp_path):
    url = str(tmp_path / "a")
    write(url, "one", range(0, 500), 1.0)
    write(url, "two", range(0, 300), 2.0)
    a = Archive(url)
    try:
        assert journey_sql(a.snapshot.files["metrics"]).strip() == "SELECT * FROM metrics"
        assert journey_rows(a, "SELECT * FROM journey_metrics") == journey_rows(a, JOURNEY_SQL)
    finally:
        a.close()


def test_the_summary_of_one_run_equals_its_row_of_every_run(tmp_path):
    url = str(tmp_path / "a")
    write(url, "one", range(0, 500), 1.0)
    write(url, "two", range(0, 300), 2.0)
    write(url, "two", range(200, 400), 3.0)
    a = Archive(url)
    try:
        every = a.runs().set_index("run_id")
        assert list(every.loc[["one", "two"], "steps"]) == [499, 399]
        assert list(every.loc[["one", "two"], "last_loss"]) == [500.0, 402.0]
        for run in ("one", "two"):
            alone = a.runs(run).set_index("run_id")
            assert list(alone.index) == [run]
            pd.testing.assert_series_equal(alone.loc[run], every.loc[run], check_names=False)
    finally:
        a.close()
