"""Level-of-detail (LOD) tables of `metrics`, and exact curves from them.

A run's LOD file (`metrics_lod/run_id=<id>/lod-<uid>.parquet`) holds, per metric name, per
rank (rank -1: all ranks together; single ranks only when the run has several) and per bucket
of `width` steps (bucket k covers steps [k*width, (k+1)*width - 1]): min, max and sum of the
finite values, count, finite_count, first and last value (by step), and NaN / +Inf / -Inf
counts, at a few widths (64, 512, 4096 and 32768 by default). It is built from the run's compact files
(its "covers", in its footer; telemetry.maintain.lod_build writes it) over journey-filtered rows,
and records the attempt spans the filter used: when the spans change (a new attempt), buckets
from the first changed span on are not used. Any metric file the LOD does not cover (segments
written since) is read raw.

`curve_sql` keeps the bucketing of a full scan (curves.bucket_expression) and is exact: an LOD
bucket is used only when it lies entirely inside one curve bucket (and its parent bucket does
not), and the raw rows of the finest buckets that straddle a curve-bucket edge are read from
the covered files. So min, max, counts, first/last and x_lo/x_hi equal a full scan's; the mean
differs only by floating-point summation order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema.layout import join, parse_lod_path
from telemetry.read import curves

META_KEY = b"flightlog.lod"
ALL_RANKS = -1
DEFAULT_WIDTHS = (64, 512, 4096, 32768)  # block widths in steps, finest first
ROW_GROUP_ROWS = 65_536  # small groups: (width, name) statistics let a curve skip most of them

LOD_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("width", pa.int64()), ("name", pa.string()), ("rank", pa.int32()),
    ("bucket", pa.int64()), ("step_lo", pa.int64()), ("step_hi", pa.int64()), ("min", pa.float64()),
    ("max", pa.float64()), ("sum", pa.float64()), ("count", pa.int64()), ("finite_count", pa.int64()),
    ("first", pa.float64()), ("last", pa.float64()), ("nan_count", pa.int64()), ("posinf_count", pa.int64()),
    ("neginf_count", pa.int64()),
])


@dataclass(frozen=True, slots=True)
class LodInfo:
    """What a LOD file's footer says about it."""

    rel: str
    run_id: str
    covers: tuple[str, ...]                 # metric files (relative paths) it summarises
    spans: dict[int, tuple[int, int]]       # attempt spans of the journey filter it applied
    widths: tuple[int, ...]
    ranks: tuple[int, ...]                  # ranks in the covered rows
    per_rank: bool                          # rows per single rank exist (besides rank -1)
    created_at: str
    rows: int
    local: str | None = None                # where DuckDB reads it (set by the catalog)


def info_from_metadata(rel: str, md: pq.FileMetaData, local: str | None = None) -> LodInfo | None:
    return info_from_json(rel, (md.metadata or {}).get(META_KEY), md.num_rows, local)


def info_from_json(rel: str, raw: bytes | str | None, rows: int, local: str | None = None) -> LodInfo | None:
    """The LodInfo of a LOD file from its `flightlog.lod` metadata (as the per-run index keeps it)."""
    run_id = parse_lod_path(rel)
    if raw is None or run_id is None:
        return None
    try:
        m = json.loads(raw)
        return LodInfo(rel, run_id, tuple(m["covers"]), {int(a): (int(s[0]), int(s[1])) for a, s in m["spans"].items()},
                       tuple(int(w) for w in m["widths"]), tuple(int(r) for r in m["ranks"]), bool(m["per_rank"]),
                       str(m["created_at"]), int(rows), local)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def lod_infos(fs, root: str, rels: Iterable[str]) -> dict[str, LodInfo]:
    out = {}
    for rel in rels:
        try:
            with fs.open(join(root, rel), "rb") as fh:
                info = info_from_metadata(rel, pq.ParquetFile(fh).metadata)
        except Exception:  # noqa: BLE001 - an unreadable LOD file is simply not used
            continue
        if info is not None:
            out[rel] = info
    return out


def choose_lod(infos: Mapping[str, LodInfo] | Iterable[LodInfo], live_metric_rels: Iterable[str]) -> LodInfo | None:
    """The newest LOD file whose covered files are all still live (else none: read raw)."""
    live = set(live_metric_rels)
    items = infos.values() if isinstance(infos, Mapping) else infos
    valid = [i for i in items if i.covers and set(i.covers) <= live]
    return max(valid, key=lambda i: (i.created_at, i.rel), default=None)


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    # GLOBAL: cursors are new sessions; else NaN counts read 0 from min/max stats
    con.execute("SET GLOBAL parquet_can_have_nan = true")
    return con


def spans_of(paths: list[str]) -> dict[int, tuple[int, int]]:
    """{attempt: (min step, max step)} of the metric rows in `paths` (the journey filter a LOD applies)."""
    con = connect()
    try:
        rows = con.execute(f"SELECT attempt, min(step), max(step) FROM {curves.read_parquet_sql(paths)} "
                           "GROUP BY attempt").fetchall()
    finally:
        con.close()
    return {int(a): (int(lo), int(hi)) for a, lo, hi in rows}


def build_lod_table(run_id: str, paths: list[str], spans: Mapping[int, tuple[int, int]],
                    widths: tuple[int, ...], con: Any = None) -> tuple[pa.Table, list[int]]:
    """The LOD rows of journey-filtered metric rows in `paths` (all widths), and the ranks seen.
    `con`: a connection from `connect()` to run on (closed here), so another thread can interrupt it."""
    w0 = int(widths[0])
    fv = curves.FINITE_VALUE
    con = con if con is not None else connect()
    try:
        con.execute(f"""
CREATE TEMP TABLE base AS
SELECT name, rank, step // {w0} AS bucket, min(step) AS step_lo, max(step) AS step_hi,
       min({fv}) AS "min", max({fv}) AS "max", sum({fv}) AS "sum", count(*) AS count, count({fv}) AS finite_count,
       arg_min(value, step) AS first, arg_max(value, step) AS last, {curves.NONFINITE_COUNTS_SQL}
FROM {curves.read_parquet_sql(paths)}
WHERE step >= 0 AND {curves.journey_predicate(spans)}
GROUP BY name, rank, step // {w0}""")
        ranks = [int(r[0]) for r in con.execute("SELECT DISTINCT rank FROM base ORDER BY 1").fetchall()]
        merge = """min(step_lo) AS step_lo, max(step_hi) AS step_hi, min("min") AS "min", max("max") AS "max",
       sum("sum") AS "sum", sum(count)::BIGINT AS count, sum(finite_count)::BIGINT AS finite_count,
       arg_min(first, step_lo) AS first, arg_max(last, step_hi) AS last, sum(nan_count)::BIGINT AS nan_count,
       sum(posinf_count)::BIGINT AS posinf_count, sum(neginf_count)::BIGINT AS neginf_count"""
        src = "base" if len(ranks) > 1 else "(SELECT * FROM base WHERE false)"
        parts = [
            f"SELECT {w0} AS width, name, {ALL_RANKS} AS rank, bucket, {merge} FROM base GROUP BY name, bucket",
            f"SELECT {w0} AS width, name, rank, bucket, step_lo, step_hi, \"min\", \"max\", \"sum\", count, "
            f"finite_count, first, last, nan_count, posinf_count, neginf_count FROM {src}",
        ]
        con.execute(f"CREATE TEMP TABLE lvl AS {' UNION ALL '.join(parts)}")
        for w in widths[1:]:
            f = int(w) // w0
            con.execute(f"INSERT INTO lvl SELECT {int(w)}, name, rank, bucket // {f}, {merge} FROM lvl "
                        f"WHERE width = {w0} GROUP BY name, rank, bucket // {f}")
        cols = ", ".join(f'"{c}"' if c in ("min", "max", "sum", "first", "last") else c for c in LOD_SCHEMA.names[1:])
        out = con.sql(f"SELECT {curves.quote_str(run_id)} AS run_id, {cols} FROM lvl "
                          "ORDER BY width, name, rank, bucket").to_arrow_table()
    finally:
        con.close()
    return out.cast(LOD_SCHEMA), ranks


# ---- curves -------------------------------------------------------------------------------------

def usable_rank(info: LodInfo, rank: int | None) -> int | None:
    """The LOD rank to read for a curve of `rank` (None: all ranks); None when the LOD cannot serve it."""
    if rank is None:
        return ALL_RANKS
    if info.per_rank:
        return int(rank) if int(rank) in info.ranks else None
    return ALL_RANKS if info.ranks == (int(rank),) else None


def valid_below(info: LodInfo, spans_now: Mapping[int, tuple[int, int]]) -> float:
    """Steps below this are summarised correctly by the LOD under the journey filter of `spans_now`:
    the first step whose coverage by some attempt's span differs from when the LOD was built."""
    cut = float("inf")
    for a in set(spans_now) | set(info.spans):
        now, then = spans_now.get(a), info.spans.get(a)
        if now == then:
            continue
        if now is None or then is None:
            cut = min(cut, (now or then)[0])  # type: ignore[index]
        elif now[0] != then[0]:
            cut = min(cut, now[0], then[0])
        else:  # same start, another end: only the steps past the shorter end changed
            cut = min(cut, min(now[1], then[1]) + 1)
    return cut


@dataclass(frozen=True, slots=True)
class CurvePlan:
    """Which LOD blocks and which raw rows make up an exact curve (see `plan_curve`)."""

    blocks: pa.Table      # width, bucket (LOD block), b (the curve bucket it lies in)
    edges: pa.Table       # step: raw steps of the finest blocks that straddle a curve-bucket edge
    full_lo: int          # raw rows below this step, and above `full_hi`, are read by range
    full_hi: int


def _ceil_div(a: np.ndarray | int, d: int) -> np.ndarray | int:
    return -((-a) // d)


def plan_curve(*, lo: int, hi: int, buckets: int, cut: float, widths: tuple[int, ...]) -> CurvePlan | None:
    """Split each curve bucket (curves.bucket_expression's, over [lo, hi]) into whole LOD blocks,
    coarsest first, plus raw steps: the canonical decomposition, so every step is counted once.
    None when no whole finest block fits (the raw scan is as cheap)."""
    n, w0 = hi - lo + 1, widths[0]
    top = hi if cut == float("inf") else min(hi, int(cut) - 1)
    full_lo = int(_ceil_div(max(lo, 0), w0) * w0)
    full_hi = ((top + 1) // w0) * w0 - 1
    if full_hi < full_lo:
        return None
    b = np.arange(buckets, dtype=np.int64)
    # bucket b holds the steps s with (s - lo) * buckets // n == b
    starts = lo + _ceil_div(b * n, buckets)
    ends = lo + _ceil_div((b + 1) * n, buckets) - 1
    s, e = np.maximum(starts, full_lo), np.minimum(ends, full_hi)
    keep = e >= s
    s, e, owner = s[keep], e[keep], b[keep]
    blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for w in sorted(widths, reverse=True):
        a, z = _ceil_div(s, w) * w, ((e + 1) // w) * w  # whole blocks [a, z)
        has = z > a
        count = np.where(has, (z - a) // w, 0)
        if count.sum():
            rep = np.repeat(np.arange(len(s)), count)
            offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            blocks.append((np.full(len(rep), w, np.int64), a[rep] // w + offset, owner[rep]))
        # what is left: left and right of the whole blocks (or everything when none fit)
        ls, le = s, np.where(has, a - 1, e)
        rs, re = np.where(has, z, 1), np.where(has, e, 0)
        s = np.concatenate([ls, rs])
        e = np.concatenate([le, re])
        owner = np.concatenate([owner, owner])
        keep = e >= s
        s, e, owner = s[keep], e[keep], owner[keep]
    count = e - s + 1
    edge = np.repeat(s, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    if blocks:
        w_, k_, b_ = (np.concatenate(x) for x in zip(*blocks, strict=True))
    else:
        w_ = k_ = b_ = np.empty(0, np.int64)
    return CurvePlan(pa.table({"width": w_, "bucket": k_, "b": b_}), pa.table({"step": edge.astype(np.int64)}),
                     full_lo, full_hi)


def aligned_window(lo: int, hi: int, buckets: int, block: int) -> tuple[int, int, int]:
    """(lo, hi, buckets) covering [lo, hi] whose buckets are whole `block`-step LOD blocks: lo rounded
    down to a block, each bucket a whole number of blocks, at most `buckets` buckets. With n = hi - lo + 1
    a multiple of the bucket count, curves' bucket of a step is (step - lo) // width: no block is cut."""
    lo = (lo // block) * block
    width = -(-(hi - lo + 1) // (buckets * block)) * block  # steps per bucket, whole blocks
    count = -(-(hi - lo + 1) // width)
    return lo, lo + count * width - 1, count


def curve_sql(*, lod_src: str, covered_src: str | None, tail_src: str | None, where: list[str], lod_rank: int,
              name: str, lo: int, hi: int, buckets: int, plan: CurvePlan, blocks: str, edges: str) -> str:
    """Exact bucket aggregate (same buckets as curves.curve_sql with x="step") from LOD blocks and raw
    rows. `blocks`/`edges`: names under which the caller registered plan.blocks/plan.edges.
    `where`: the raw-row predicates (name, rank, journey) for the covered files and the tail."""
    n = int(hi) - int(lo) + 1
    lo, hi, b = int(lo), int(hi), int(buckets)
    fv = curves.FINITE_VALUE
    raw_cols = (f"((step - {lo}) * {b}) // {n} AS b, step AS step_lo, step AS step_hi, {fv} AS mn, {fv} AS mx, "
                f"{fv} AS sm, (isfinite(value))::BIGINT AS fin, value AS first, value AS last, 1 AS cnt, "
                "isnan(value)::BIGINT AS nan, (value = 'inf'::DOUBLE)::BIGINT AS pinf, "
                "(value = '-inf'::DOUBLE)::BIGINT AS ninf")
    cond = " AND ".join(where) or "TRUE"
    parts = [f"SELECT s.b, step_lo, step_hi, \"min\" AS mn, \"max\" AS mx, \"sum\" AS sm, finite_count AS fin, "
             f"first, last, count AS cnt, nan_count AS nan, posinf_count AS pinf, neginf_count AS ninf "
             f"FROM {lod_src} l JOIN {blocks} s ON l.width = s.width AND l.bucket = s.bucket "
             f"WHERE l.name = {curves.quote_str(name)} AND l.rank = {int(lod_rank)}"]
    if covered_src is not None:
        # three narrow reads: sorted files let the two ranges skip row groups; the edges are a semi join
        for rng in ((lo, plan.full_lo - 1), (plan.full_hi + 1, hi)):
            if rng[1] >= rng[0]:
                parts.append(f"SELECT {raw_cols} FROM {covered_src} "
                             f"WHERE {cond} AND step BETWEEN {rng[0]} AND {rng[1]}")
        if plan.edges.num_rows:
            parts.append(f"SELECT {raw_cols} FROM {covered_src} WHERE {cond} AND step IN (SELECT step FROM {edges})")
    if tail_src is not None:
        parts.append(f"SELECT {raw_cols} FROM {tail_src} WHERE {cond} AND step BETWEEN {lo} AND {hi}")
    return f"""
SELECT b AS bucket, min(step_lo) AS x_lo, max(step_hi) AS x_hi, min(mn) AS "min", max(mx) AS "max",
       sum(sm) / nullif(sum(fin), 0) AS mean, arg_min(first, step_lo) AS first, arg_max(last, step_hi) AS last,
       sum(cnt)::BIGINT AS count, sum(nan)::BIGINT AS nan_count, sum(pinf)::BIGINT AS posinf_count,
       sum(ninf)::BIGINT AS neginf_count
FROM ({" UNION ALL ".join(parts)})
GROUP BY 1
ORDER BY 1
"""


def range_sql(*, lod_src: str, tail_src: str | None, covered_src: str | None, where: list[str], lod_rank: int,
              name: str, cut: float, widths: tuple[int, ...]) -> str:
    """min/max step of a curve's rows: LOD buckets below `cut`, raw rows for the rest."""
    w = widths[0]
    parts = [f"SELECT min(step_lo) AS lo, max(step_hi) AS hi FROM {lod_src} WHERE width = {w} AND "
             f"name = {curves.quote_str(name)} AND rank = {int(lod_rank)}"
             + ("" if cut == float("inf") else f" AND (bucket + 1) * {w} <= {int(cut)}")]
    cond = " AND ".join(where) or "TRUE"
    if tail_src is not None:
        parts.append(f"SELECT min(step), max(step) FROM {tail_src} WHERE {cond}")
    if covered_src is not None:
        extra = "step < 0" if cut == float("inf") else f"(step < 0 OR step >= {(int(cut) // w) * w})"
        parts.append(f"SELECT min(step), max(step) FROM {covered_src} WHERE {cond} AND {extra}")
    return f"SELECT min(lo) AS lo, max(hi) AS hi FROM ({' UNION ALL '.join(parts)})"


__all__ = ["ALL_RANKS", "LOD_SCHEMA", "CurvePlan", "LodInfo", "aligned_window", "plan_curve", "build_lod_table",
           "choose_lod", "curve_sql", "lod_infos", "usable_rank", "valid_below"]
