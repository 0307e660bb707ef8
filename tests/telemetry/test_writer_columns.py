"""Writer.metrics_columns (issue 16): a batch of steps handed over a column per name gives exactly the rows
that one metrics() call per step gives (NaN/Inf kept, None left out, the same wall-time rounding), and is
bounded, dropped and counted like those calls."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys

from telemetry import Writer

T0 = 1_714_521_600.123456789  # a wall time with more digits than the archive keeps


def _rows(rd, archive: str, run: str) -> list[tuple]:
    rows = [r for r in rd.table(archive, "metrics").to_pylist() if r["run_id"] == run]
    return sorted((r["step"], r["name"], repr(r["value"]), r["wall_time"]) for r in rows)


def _batches() -> list[tuple[list[int], dict[str, list], list]]:
    return [
        ([0, 1, 2], {"loss": [2.5, math.nan, 2.25], "grad_norm": [math.inf, -math.inf, 1.0],
                     "lr": [1e-3, 1e-3, 9e-4]}, [T0, T0 + 0.5, T0 + 1.000_000_4]),
        # None: the name is left out of that step, as metrics() gets it without the key
        ([3, 4, 5, 6], {"loss": [None, 2.0, 1.5, None], "data_wait_s": [0.1, None, None, 0.2],
                        "tokens_seen": [4096.0, 8192.0, 12288.0, 16384.0]}, [T0 + 3, T0 + 4, T0 + 5, T0 + 6]),
        ([7], {"loss": [1.25]}, [dt.datetime(2024, 5, 1, 0, 0, 7, 250, tzinfo=dt.UTC)]),  # a datetime wall time
        ([], {}, []),  # nothing at all
    ]


def test_metrics_columns_gives_exactly_the_rows_of_one_metrics_call_per_step(archive, fast, rd):
    by_calls = Writer(archive, "calls", writer_config=fast)
    by_columns = Writer(archive, "columns", writer_config=fast)
    for steps, columns, walls in _batches():
        for i, step in enumerate(steps):
            by_calls.metrics(step, {k: c[i] for k, c in columns.items() if c[i] is not None}, wall_time=walls[i])
        by_columns.metrics_columns(steps, columns, walls)
    by_calls.close()
    by_columns.close()
    want = _rows(rd, archive, by_calls.run_id)
    assert len(want) == 3 * 3 + 8 + 1
    assert _rows(rd, archive, by_columns.run_id) == want
    assert by_columns.dropped == 0


def test_metrics_columns_keeps_the_order_of_metric_points_and_steps_and_mixes_with_other_calls(archive, fast, rd):
    w = Writer(archive, "mixed", writer_config=fast)
    w.metric(0, "x", 1.0, wall_time=T0)
    w.metrics_columns((1, 2), {"a": (1.0, 2.0), "b": (3.0, 4.0)}, (T0, T0))
    w.metrics(3, {"a": 5.0}, wall_time=T0)
    assert w._take_queued(include_rank_row=False)[0][:12] == [0, "x", 1.0, T0, 1, "a", 1.0, T0, 1, "b", 3.0, T0]
    w.metrics_columns([4], {"a": [6.0]})  # wall_times=None: now
    w.close()
    rows = _rows(rd, archive, w.run_id)
    assert [(s, n) for s, n, _, _ in rows] == [(4, "a")]  # what was taken above was not handed to the flusher
    assert abs(rows[0][3].timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 120


def test_metrics_columns_is_bounded_in_steps_like_metrics_calls_and_counts_what_it_drops(archive, fast):
    w = Writer(archive, "bounded", writer_config=dataclasses.replace(fast, queue_size=5))  # room for 5 steps
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)  # the flush thread cannot take the batches in between: the bound is what acts
    try:
        w.metrics_columns(list(range(4)), {"a": [1.0] * 4, "b": [2.0, None, 2.0, 2.0]}, [T0] * 4)
        w.metrics_columns([4, 5, 6], {"a": [1.0, 1.0, None], "b": [2.0, 2.0, 2.0]}, [T0] * 3)
        queued, dropped = w._cols_in - w._cols_out, w.dropped_count
    finally:
        sys.setswitchinterval(interval)
    assert (queued, dropped) == (5, 3)  # step 4 kept; steps 5 and 6 dropped: their 3 points counted
    w.close()
    w.metrics_columns([7], {"a": [1.0], "b": [None]}, [T0])  # after close: dropped and counted, like metrics()
    assert w.dropped_count == 3 + 1


def test_metrics_columns_drops_a_batch_of_ragged_columns_without_raising(archive, fast, rd):
    w = Writer(archive, "ragged", writer_config=fast)
    w.metrics_columns([0, 1], {"a": [1.0], "b": [1.0, 2.0]}, [T0, T0])
    w.metrics_columns([2], {"a": [3.0]}, [T0])
    assert w.dropped_count == 3
    w.close()
    assert [(s, n) for s, n, _, _ in _rows(rd, archive, w.run_id)] == [(2, "a")]
