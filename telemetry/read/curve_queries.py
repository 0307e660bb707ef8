"""`Archive.curve`: a metric downsampled to at most N buckets, from the run's level-of-detail table
where it has one (telemetry.read.lod: exact, and about 20x faster on a 1 M-step run) and from its raw
rows elsewhere (telemetry.read.curves). A raw scan slow enough to matter asks for a level of detail
of the run's segments, built in the background (telemetry.read.tail_lod), so the next curve skips it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import duckdb
import pandas as pd

from telemetry.read import curves, lod, tail_lod
from telemetry.read.broken_files import heals
from telemetry.store.errors import QueryError


class CurveQueries:
    """The curve methods of `telemetry.read.archive.Archive` (a mixin: it uses the Archive's snapshot,
    caches, cursors and run lookups: `_snap`, `_ranges`, `_tail_lods`, `_df`, `_cursor`,
    `_set_aside_broken`, `_run_files`, `_local_run_files`, `_local_lod`, `_run_source`, `_where`,
    `resolve_run`, `attempt_spans`, `version`)."""

    @heals
    def curve(
        self,
        run: str,
        name: str,
        *,
        x: str = "step",
        buckets: int = 2000,
        lo: float | None = None,
        hi: float | None = None,
        rank: int | None = None,
        journey: bool = True,
        align: bool = False,
    ) -> pd.DataFrame:
        """A metric downsampled to at most `buckets` buckets over [lo, hi] of x (step, tokens, time).

        One row per non-empty bucket: bucket, x_lo, x_hi, min, max, mean (finite values only),
        first, last (by x), count, nan_count, posinf_count, neginf_count.

        `align=True` (x="step" with lo and hi given): the window is widened to whole blocks of the
        run's level-of-detail table (less than one bucket more on each side, at most `buckets`
        buckets), so every bucket is read from the LOD alone: about 20x faster on a 1 M-step run
        than buckets whose edges cut blocks (those blocks' raw rows are read). For charts.
        """
        if x not in curves.X_KINDS:
            raise QueryError(f"unknown x {x!r}: use one of {', '.join(curves.X_KINDS)}")
        if not isinstance(buckets, int) or buckets < 1:
            raise QueryError(f"buckets must be a positive integer, got {buckets!r}")
        run_id = self.resolve_run(run)
        if align and x == "step" and journey and lo is not None and hi is not None:
            info = self._lod_info(run_id)
            # Only a window of at least `buckets` whole blocks is widened: a narrower one (a zoom) keeps its
            # own resolution, down to one bucket per step, instead of collapsing into a block's bucket.
            if (info is not None and math.isfinite(float(lo)) and math.isfinite(float(hi)) and hi >= lo
                    and hi - lo + 1 >= buckets * info.widths[0]):
                lo, hi, buckets = lod.aligned_window(int(math.floor(lo)), int(math.ceil(hi)), buckets, info.widths[0])
        if x == "step" and journey:
            fast = self._lod_curve(run_id, name, buckets=buckets, lo=lo, hi=hi, rank=rank)
            if fast is not None:
                return fast
        source = self._run_source("metrics", run_id)  # small files are read into memory here, once
        scan_started = time.perf_counter()  # a slow scan, not a first read of small files, asks for a tail LOD
        where = [f"name = {curves.quote_str(name)}"] + self._where(run_id, rank=rank, attempt=None, journey=journey)
        points = curves.points_sql(source, x=x, where=where)
        clip = lo is not None or hi is not None
        if lo is None or hi is None:
            key = (self._snap.run_version(run_id), run_id, name, x, rank, journey)
            if key not in self._ranges:
                r = self._df(curves.range_sql(points, x=x))
                vals = r.iloc[0]
                self._ranges[key] = None if pd.isna(vals["lo"]) else (float(vals["lo"]), float(vals["hi"]))
            data_range = self._ranges[key]
            if data_range is None:
                return _empty_curve(x)
            lo = data_range[0] if lo is None else lo
            hi = data_range[1] if hi is None else hi
        if x == "time":
            lo, hi = _time_bound(lo), _time_bound(hi)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))) or float(hi) < float(lo):
            return _empty_curve(x)
        out = self._df(curves.curve_sql(points, x=x, lo=lo, hi=hi, buckets=buckets, clip=clip))
        slow = time.perf_counter() - scan_started > tail_lod.MIN_SCAN_S
        if slow and x == "step" and journey and run_id not in self._snap.lod:
            self._tail_lods.want(run_id, self._local_run_files("metrics", run_id))  # the next curves skip this scan
        return out

    def _lod_info(self, run_id: str) -> Any:
        """The run's persisted LOD, else the one this reader built over its segments (tail_lod.py), else None."""
        info = self._local_lod(self._snap.lod.get(run_id))
        if info is None:
            info = self._tail_lods.get(run_id, self._run_files("metrics", run_id))
        return info

    def _lod_curve(self, run_id: str, name: str, *, buckets: int, lo: float | None, hi: float | None,
                   rank: int | None) -> pd.DataFrame | None:
        """curve(x="step") from the run's level-of-detail table plus raw rows where it falls short;
        None when there is no usable LOD (the caller scans raw rows)."""
        info = self._lod_info(run_id)
        lod_rank = None if info is None else lod.usable_rank(info, rank)
        if info is None or lod_rank is None or not info.local:
            return None
        cut = lod.valid_below(info, self.attempt_spans(run_id))
        files = self._local_run_files("metrics", run_id)
        covered = [f for f in files if f.rel in set(info.covers)]
        tail = [f for f in files if f.rel not in set(info.covers)]
        covered_src = f"({self._small.source_sql('metrics', covered)})" if covered else None
        tail_src = f"({self._small.source_sql('metrics', tail)})" if tail else None
        if tail and info is not self._snap.lod.get(run_id) and tail_lod.worth_rebuilding(covered, tail):
            self._tail_lods.want(run_id, files)  # a live run outgrew the LOD this reader built
        lod_src = curves.read_parquet_sql([info.local])
        where = [f"name = {curves.quote_str(name)}"] + self._where(run_id, rank=rank, attempt=None, journey=True)
        if lo is None or hi is None:
            key = (self._snap.run_version(run_id), run_id, name, "lod", rank)
            if key not in self._ranges:
                r = self._df(lod.range_sql(lod_src=lod_src, tail_src=tail_src, covered_src=covered_src, where=where,
                                           lod_rank=lod_rank, name=name, cut=cut, widths=info.widths)).iloc[0]
                self._ranges[key] = None if pd.isna(r["lo"]) else (float(r["lo"]), float(r["hi"]))
            data_range = self._ranges[key]
            if data_range is None:
                return _empty_curve("step")
            lo = data_range[0] if lo is None else lo
            hi = data_range[1] if hi is None else hi
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))) or float(hi) < float(lo):
            return _empty_curve("step")
        lo_i, hi_i = math.ceil(float(lo)), math.floor(float(hi))
        if hi_i < lo_i or cut <= lo_i or lo_i != float(lo) or hi_i != float(hi):
            return None  # fractional bounds or nothing the LOD covers: the raw scan handles it
        plan = lod.plan_curve(lo=lo_i, hi=hi_i, buckets=buckets, cut=cut, widths=info.widths)
        if plan is None:
            return None
        sql = lod.curve_sql(lod_src=lod_src, covered_src=covered_src, tail_src=tail_src, where=where,
                            lod_rank=lod_rank, name=name, lo=lo_i, hi=hi_i, buckets=buckets, plan=plan,
                            blocks="_lod_blocks", edges="_lod_edges")
        cur = self._cursor()  # the plan's tables are registered on this cursor only
        try:
            cur.register("_lod_blocks", plan.blocks)
            cur.register("_lod_edges", plan.edges)
            return cur.execute(sql).df()
        except duckdb.Error as exc:
            self._set_aside_broken(exc)
            raise QueryError(f"query failed: {exc}") from None
        finally:
            cur.close()


def _time_bound(value: Any) -> int:
    """A time bound (Timestamp, datetime, epoch seconds or epoch microseconds) -> epoch microseconds."""
    if isinstance(value, (pd.Timestamp,)) or hasattr(value, "timestamp"):
        ts = pd.Timestamp(value)
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        return int(ts.value // 1000)
    v = float(value)
    return int(v) if abs(v) > 1e14 else int(v * 1_000_000)  # seconds unless it already looks like µs


def _empty_curve(x: str) -> pd.DataFrame:
    x_dtype = "datetime64[us, UTC]" if x == "time" else ("int64" if x == "step" else "float64")
    cols = {
        "bucket": "int64", "x_lo": x_dtype, "x_hi": x_dtype, "min": "float64", "max": "float64", "mean": "float64",
        "first": "float64", "last": "float64", "count": "int64", "nan_count": "int64",
        "posinf_count": "int64", "neginf_count": "int64",
    }
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})
