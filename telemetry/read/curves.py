"""SQL for downsampled curves and the journey filter (no DuckDB connection here, only text).

A curve is one aggregate query over the run's own files, filtered by name before grouping:
each bucket keeps min/max/mean over finite values, first/last by x, and counts of NaN, +Inf
and -Inf, so a single spike or a single NaN survives any bucket count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

X_KINDS = ("step", "tokens", "time")
TOKENS_METRIC = "tokens_seen"

# The one rule for values that are not finite, shared by every bucketed query (curves, the LOD,
# telemetry.read.queries): min/max/mean see finite values only, and NaN, +Inf and -Inf are counted apart.
FINITE_VALUE = "CASE WHEN isfinite(value) THEN value END"
FINITE_STATS_SQL = f'min({FINITE_VALUE}) AS "min", max({FINITE_VALUE}) AS "max", avg({FINITE_VALUE}) AS mean'
NONFINITE_COUNTS_SQL = ("sum(isnan(value)::BIGINT)::BIGINT AS nan_count, "
                        "sum((value = 'inf'::DOUBLE)::BIGINT)::BIGINT AS posinf_count, "
                        "sum((value = '-inf'::DOUBLE)::BIGINT)::BIGINT AS neginf_count")


def quote_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def file_list(paths: Iterable[str]) -> str:
    return "[" + ", ".join(quote_str(p) for p in paths) + "]"


def read_parquet_sql(paths: list[str], *, union_by_name: bool = True) -> str:
    union = "true" if union_by_name else "false"
    return f"read_parquet({file_list(paths)}, union_by_name={union}, hive_partitioning=false)"


def journey_predicate(spans: Mapping[int, tuple[int, int]]) -> str:
    """SQL predicate keeping a (attempt, step) row unless a later attempt's step span covers it."""
    clauses = []
    for later, (lo, hi) in sorted(spans.items()):
        if any(a < later for a in spans):
            clauses.append(f"(attempt < {int(later)} AND step BETWEEN {int(lo)} AND {int(hi)})")
    return f"NOT ({' OR '.join(clauses)})" if clauses else "TRUE"


def x_expression(x: str) -> tuple[str, str]:
    """(SQL of x as a number for bucketing, SQL of x as shown) for x in X_KINDS."""
    if x == "step":
        return "step", "step"
    if x == "time":
        return "epoch_us(wall_time)", "wall_time"
    if x == "tokens":
        return "x_tokens", "x_tokens"
    raise ValueError(f"unknown x {x!r}: use one of {', '.join(X_KINDS)}")


def points_sql(source: str, *, x: str, where: list[str]) -> str:
    """Rows (attempt, rank, step, wall_time, value[, x_tokens]) of one metric, filtered first."""
    cond = " AND ".join(where) if where else "TRUE"
    base = f"SELECT attempt, rank, step, wall_time, value FROM {source} WHERE {cond}"
    if x != "tokens":
        return base
    # tokens: the tokens_seen value logged at the same (attempt, step), any rank
    tok_where = [w for w in where if not w.startswith("name =")]
    tok_where += [f"name = {quote_str(TOKENS_METRIC)}", "isfinite(value)"]
    tokens = (
        f"SELECT attempt, step, max(value) AS x_tokens FROM {source} WHERE {' AND '.join(tok_where)} "
        "GROUP BY attempt, step"
    )
    return f"SELECT p.*, t.x_tokens FROM ({base}) p JOIN ({tokens}) t USING (attempt, step)"


def range_sql(points: str, *, x: str) -> str:
    xnum, _ = x_expression(x)
    return f"SELECT min({xnum}) AS lo, max({xnum}) AS hi FROM ({points})"


def bucket_expression(x: str, lo: float, hi: float, buckets: int) -> str:
    xnum, _ = x_expression(x)
    if x in ("step", "time"):
        lo_i, hi_i = int(lo), int(hi)
        # integer arithmetic: exact and faster than floor() on doubles
        return f"(({xnum} - {lo_i}) * {int(buckets)}) // ({hi_i - lo_i + 1})"
    width = (float(hi) - float(lo)) + 1.0
    return f"CAST(floor(({xnum} - {float(lo)!r}) * {int(buckets)} / {width!r}) AS BIGINT)"


def curve_sql(points: str, *, x: str, lo: float, hi: float, buckets: int, clip: bool = True) -> str:
    """The bucket aggregate; `clip=False` when [lo, hi] is the data's own range (no filter needed)."""
    xnum, xshow = x_expression(x)
    bucket = bucket_expression(x, lo, hi, buckets)
    lo_lit, hi_lit = (int(lo), int(hi)) if x in ("step", "time") else (float(lo), float(hi))
    where = f"WHERE {xnum} BETWEEN {lo_lit!r} AND {hi_lit!r}" if clip else ""
    # flat: one hash aggregate straight over the filtered points (a projection layer costs ~10%)
    return f"""
SELECT {bucket} AS bucket, min({xshow}) AS x_lo, max({xshow}) AS x_hi,
       {FINITE_STATS_SQL},
       arg_min(value, {xnum}) AS first, arg_max(value, {xnum}) AS last, count(*) AS count,
       {NONFINITE_COUNTS_SQL}
FROM ({points})
{where}
GROUP BY 1
ORDER BY 1
"""
