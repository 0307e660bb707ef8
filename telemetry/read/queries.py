"""Queries the app's pages share beyond the Archive's own methods: per-attempt curves, per-rank step
times and GPU telemetry, bucketed over a common grid.

Each takes an open Archive (anything with `sql(query, params) -> pyarrow.Table`) and returns a
DataFrame; the app caches them per archive version (app/ui/state.py). Bucketing and non-finite
values follow the curves' rules (telemetry.read.curves): buckets are `(x - lo) * buckets // (hi - lo + 1)`,
min/max/mean see finite values only, and NaN, +Inf and -Inf are counted apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from telemetry.read import curves, series

ATTEMPT_CURVE_COLUMNS = ["attempt", "bucket", "x_lo", "x_hi", "min", "max", "mean", "count",
                         "nan_count", "posinf_count", "neginf_count"]


def _df(archive: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    return archive.sql(sql, list(params) or None).to_pandas()


def _span(archive: Any, sql: str, params: Sequence[Any]) -> tuple[int, int] | None:
    """(lo, hi) of a `SELECT ... AS lo, ... AS hi` query, None when there are no rows."""
    span = _df(archive, sql, params)
    if span.empty or pd.isna(span["lo"].iloc[0]):
        return None
    return int(span["lo"].iloc[0]), int(span["hi"].iloc[0])


def attempt_curves(archive: Any, run_id: str, name: str, *, buckets: int = 600) -> pd.DataFrame:
    """One curve per attempt over the whole run, every row kept (no journey filter): the lineage chart.

    Buckets are shared by every attempt (one step grid), so attempts overlay exactly. Columns:
    attempt, bucket, x_lo, x_hi, min, max, mean, count, nan_count, posinf_count, neginf_count.
    """
    span = _span(archive, "SELECT min(step) AS lo, max(step) AS hi FROM metrics WHERE run_id = ? AND name = ?",
                 (run_id, name))
    if span is None:
        return pd.DataFrame(columns=ATTEMPT_CURVE_COLUMNS)
    bucket = curves.bucket_expression("step", span[0], span[1], buckets)
    return _df(archive, f"""
SELECT attempt, {bucket} AS bucket, min(step) AS x_lo, max(step) AS x_hi, {curves.FINITE_STATS_SQL},
       count(*) AS count, {curves.NONFINITE_COUNTS_SQL}
FROM metrics WHERE run_id = ? AND name = ?
GROUP BY attempt, bucket ORDER BY attempt, bucket""", (run_id, name))


def step_time_heatmap(archive: Any, run_id: str, *, buckets: int = 120) -> pd.DataFrame:
    """Mean step_time_s (finite values) per (rank, step bucket) over the journey: rank, bucket, x_lo, x_hi, value."""
    span = _span(archive, "SELECT min(step) AS lo, max(step) AS hi FROM metrics "
                          "WHERE run_id = ? AND name = 'step_time_s'", (run_id,))
    if span is None:
        return pd.DataFrame(columns=["rank", "bucket", "x_lo", "x_hi", "value"])
    bucket = curves.bucket_expression("step", span[0], span[1], buckets)
    return _df(archive, f"""
SELECT rank, {bucket} AS bucket, min(step) AS x_lo, max(step) AS x_hi, avg({curves.FINITE_VALUE}) AS value
FROM journey_metrics WHERE run_id = ? AND name = 'step_time_s'
GROUP BY rank, bucket ORDER BY rank, bucket""", (run_id,))


def rank_step_times(archive: Any, run_id: str) -> pd.DataFrame:
    """Per rank: median and p95 step_time_s over the journey (finite values), and how many steps it logged."""
    return _df(archive, """
SELECT rank, median(value) AS median_step_time_s, quantile_cont(value, 0.95) AS p95_step_time_s, count(*) AS steps
FROM journey_metrics WHERE run_id = ? AND name = 'step_time_s' AND isfinite(value)
GROUP BY rank ORDER BY rank""", (run_id,))


def system_names(archive: Any, run_id: str) -> list[str]:
    """The system metrics (GPU samples) a run logged, sorted."""
    return list(_df(archive, "SELECT DISTINCT name FROM system WHERE run_id = ? ORDER BY name", (run_id,))["name"])


def system_heatmap(archive: Any, run_id: str, name: str, *, buckets: int = 120) -> pd.DataFrame:
    """Mean of one system metric (finite values) per (rank, GPU, wall-time bucket): rank, gpu_index, bucket,
    t_lo, t_hi, value. One row per GPU: a process driving several GPUs (W&B's gpu.0.*, gpu.1.*) has several."""
    span = _span(archive, "SELECT epoch_us(min(wall_time)) AS lo, epoch_us(max(wall_time)) AS hi FROM system "
                          "WHERE run_id = ? AND name = ?", (run_id, name))
    if span is None:
        return pd.DataFrame(columns=["rank", "gpu_index", "bucket", "t_lo", "t_hi", "value"])
    bucket = curves.bucket_expression("time", span[0], span[1], buckets)
    return _df(archive, f"""
SELECT rank, gpu_index, {bucket} AS bucket, min(wall_time) AS t_lo, max(wall_time) AS t_hi,
       avg({curves.FINITE_VALUE}) AS value
FROM system WHERE run_id = ? AND name = ?
GROUP BY rank, gpu_index, bucket ORDER BY rank, gpu_index NULLS FIRST, bucket""", (run_id, name))


def system_summary(archive: Any, run_id: str) -> pd.DataFrame:
    """Per rank: mean GPU util and power, max temperature and memory (wide, one row per rank)."""
    return _df(archive, """
SELECT rank, any_value(host) AS host, any_value(gpu_uuid) AS gpu_uuid,
       avg(value) FILTER (WHERE name = 'gpu.util') AS mean_util_pct,
       avg(value) FILTER (WHERE name = 'gpu.power_w') AS mean_power_w,
       max(value) FILTER (WHERE name = 'gpu.temp_c') AS max_temp_c,
       max(value) FILTER (WHERE name = 'gpu.mem_used_bytes') / 1e9 AS max_mem_gb
FROM system WHERE run_id = ? GROUP BY rank ORDER BY rank""", (run_id,))


def x_bounds_for_steps(archive: Any, run_id: str, x: str, lo: int, hi: int) -> tuple[Any, Any]:
    """A step range in the units of x: tokens_seen (tokens) or wall_time (time) at those steps;
    (None, None) when the run logged nothing there."""
    if x == "step":
        return lo, hi
    if x == "tokens":
        df = _df(archive, """
SELECT min(value) AS lo, max(value) AS hi FROM journey_metrics
WHERE run_id = ? AND name = ? AND step BETWEEN ? AND ? AND isfinite(value)""",
                 (run_id, curves.TOKENS_METRIC, lo, hi))
    else:
        df = _df(archive, "SELECT min(wall_time) AS lo, max(wall_time) AS hi FROM journey_metrics "
                          "WHERE run_id = ? AND step BETWEEN ? AND ?", (run_id, lo, hi))
    if df.empty or pd.isna(df["lo"].iloc[0]):
        return None, None
    return df["lo"].iloc[0], df["hi"].iloc[0]


def metric_points(archive: Any, run_id: str) -> pd.DataFrame:
    """Per metric of a run: points, first_step, last_step, and for the few-point ones (series.is_few_points:
    sizes, final scores) the last value (`last`, at the highest step; NaN for the others: their curves
    tell). The journey draws the others and lists these in a table (telemetry.read.series)."""
    counts = _df(archive, """
SELECT name, count(*) AS points, min(step) AS first_step, max(step) AS last_step
FROM metrics WHERE run_id = ? GROUP BY name ORDER BY name""", (run_id,))
    few = [r.name for r in counts.itertuples() if series.is_few_points(int(r.points), r.first_step, r.last_step)]
    counts["last"] = float("nan")
    if few:
        marks = ", ".join("?" for _ in few)
        last = _df(archive, f"""
SELECT name, arg_max(value, step * 65536 + attempt) AS last FROM metrics WHERE run_id = ? AND name IN ({marks})
GROUP BY name""", (run_id, *few))
        counts["last"] = counts["name"].map(dict(zip(last["name"], last["last"], strict=True))).astype("float64")
    return counts
