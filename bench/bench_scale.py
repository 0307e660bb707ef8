"""flightlog at scale: a 2,000-bucket curve over 10 M and 100 M points, and a 1,000-run aggregate.

    python -m bench.bench_scale [--quick] [--only curve,agg] [--dir DIR] [--keep]

The archives are written straight as Parquet segments in the archive layout (1 M-row segments
with the writer's Parquet options, data_schema.layout.segment_path), which is what a long run's
writer leaves behind, then compacted with `telemetry.maintain.compaction.compact` (sorted compact files
plus the LOD table). Every measurement runs in a fresh interpreter (bench._harness.run_child)
whose peak RSS is reported:

- curve: `Archive(url).curve(run, "loss", buckets=2000)` cold (new process: import, open, first
  curve) and warm (the same curve again; a new half-range window each time), raw segments and
  compacted + LOD; a full scan of the largest series (`curve(x="time")`, which has no LOD, and
  an aggregate over `journey_metrics`) against the 24 GiB memory budget.
- agg: 1,000 runs x 100 k steps; `SELECT run_id, min(value), arg_max(value, step) FROM
  journey_metrics WHERE name = 'loss' GROUP BY run_id` through `Archive.sql`, cold and warm,
  with disk usage.

`--quick`: 1 M / 10 M points and 50 runs x 10 k steps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._harness import (
    GIB,
    child_task,
    emit,
    flightlog_live_bytes,
    fmt_bytes,
    fmt_s,
    machine_note,
    md_table,
    median,
    run_child,
    self_peak_rss,
    summary,
    tree_bytes,
    verdict,
)

MODULE = "bench.bench_scale"
RUN = "scale"
SEGMENT_ROWS = 1_000_000
AGG_SQL = ("SELECT run_id, min(value) AS min_loss, arg_max(value, step) AS last_loss FROM journey_metrics "
           "WHERE name = 'loss' GROUP BY run_id")
SCAN_SQL = ("SELECT count(*) AS n, min(value) AS lo, max(value) AS hi, avg(value) AS mean, "
            "count(*) FILTER (isnan(value)) AS nans FROM journey_metrics WHERE name = 'loss'")


# ---- data -------------------------------------------------------------------------------------

def _segment(run_id: str, start: int, n: int, total: int, seed: int) -> Any:
    """One segment of a loss-like series: fp32 noisy decay, a few NaN and spikes, ~0.3 s steps."""
    import pyarrow as pa

    from data_schema import schema
    from telemetry.store.wall_time import METRICS_WALL_TIME_RESOLUTION_US, round_micros

    rng = np.random.default_rng(seed)
    steps = np.arange(start, start + n, dtype=np.int64)
    loss = (2.2 * np.exp(-steps / max(1, total / 7)) + 1.9 + rng.normal(0, 0.03, n)).astype(np.float32).astype(float)
    loss[rng.integers(0, n, 2)] = np.nan
    loss[rng.integers(0, n, 1)] = 50.0
    wall_us = 1_700_000_000_000_000 + steps * 300_000 + rng.integers(-2000, 2000, n)
    # stored as the Writer stores metrics wall times by default (to the millisecond)
    wall_us = round_micros(wall_us, METRICS_WALL_TIME_RESOLUTION_US)
    zeros = pa.array(np.zeros(n, np.int32))
    pick = pa.array(np.zeros(n, np.int32))
    return pa.Table.from_arrays([
        pa.array([run_id]).take(pick), zeros, zeros, pa.array(steps), pa.array(["loss"]).take(pick),
        pa.array(loss), pa.array(wall_us).cast(pa.timestamp("us", tz="UTC")),
    ], schema=schema("metrics"))


def _write_segment(root: str, table: Any, run_id: str, seq: int) -> None:
    import pyarrow.parquet as pq

    from data_schema.layout import segment_path
    from telemetry.store.encodings import ROW_GROUP_ROWS, parquet_options

    path = os.path.join(root, segment_path("metrics", run_id, 0, 0, seq))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, **parquet_options(table.schema))


def _root_file(root: str) -> None:
    from telemetry.store.fs import ensure_root_file, open_fs

    os.makedirs(root, exist_ok=True)
    ensure_root_file(*open_fs(root))


def child_build_series(task: dict[str, Any]) -> dict[str, Any]:
    root, n = task["root"], task["points"]
    _root_file(root)
    t = time.perf_counter()
    for seq, start in enumerate(range(0, n, SEGMENT_ROWS), start=1):
        _write_segment(root, _segment(RUN, start, min(SEGMENT_ROWS, n - start), n, seq), RUN, seq)
    return {"build_s": time.perf_counter() - t, "bytes": tree_bytes(root, "*.parquet"), "rss": self_peak_rss()}


def child_build_runs(task: dict[str, Any]) -> dict[str, Any]:
    root, runs, steps = task["root"], task["runs"], task["steps"]
    _root_file(root)
    t = time.perf_counter()
    for i in range(runs):
        run_id = f"run-{i:04d}"
        for seq, start in enumerate(range(0, steps, SEGMENT_ROWS), start=1):
            _write_segment(root, _segment(run_id, start, min(SEGMENT_ROWS, steps - start), steps, i * 7919 + seq),
                           run_id, seq)
    return {"build_s": time.perf_counter() - t, "bytes": tree_bytes(root, "*.parquet"), "rss": self_peak_rss()}


def child_compact(task: dict[str, Any]) -> dict[str, Any]:
    from telemetry.maintain.compaction import compact

    t = time.perf_counter()
    rep = compact(task["root"], task.get("run"), grace_s=0.0)  # grace 0: the replaced parts go in the same pass
    took = time.perf_counter() - t
    return {"compact_s": took, "problems": rep.problems[:3], "lod_rows": rep.lod_rows, "rss": self_peak_rss()}


def child_curve(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from telemetry import Archive

    t1 = time.perf_counter()
    a = Archive(task["root"])
    t2 = time.perf_counter()
    c = a.curve(RUN, "loss", buckets=2000)
    t3 = time.perf_counter()
    out: dict[str, Any] = {"import_s": t1 - t0, "open_s": t2 - t1, "curve_s": t3 - t2, "rows": len(c),
                           "max": float(c["max"].max()), "nan": int(c["nan_count"].sum())}
    t = time.perf_counter()
    a.wait_background()  # raw segments: the reader builds their LOD after the first slow curve
    out["background_s"] = time.perf_counter() - t
    warm, window = [], []
    n, repeat = task["points"], task.get("repeat", 5)
    for _ in range(repeat):
        t = time.perf_counter()
        a.curve(RUN, "loss", buckets=2000)
        warm.append(time.perf_counter() - t)
    for i in range(repeat):  # a new half-range window each time: no cached range
        lo = (i * n) // (2 * repeat) + 1
        t = time.perf_counter()
        a.curve(RUN, "loss", buckets=2000, lo=lo, hi=lo + n // 2)
        window.append(time.perf_counter() - t)
    out.update(warm_s=median(warm), window_s=median(window), rss=self_peak_rss())
    return out


def child_scan(task: dict[str, Any]) -> dict[str, Any]:
    """Queries that read every point of the series (no LOD helps): the memory budget's workload."""
    from telemetry import Archive

    a = Archive(task["root"])
    t = time.perf_counter()
    row = a.sql(SCAN_SQL).to_pylist()[0]
    sql_s = time.perf_counter() - t
    rss_sql = self_peak_rss()
    t = time.perf_counter()
    c = a.curve(RUN, "loss", buckets=2000, x="time")
    time_s = time.perf_counter() - t
    return {"sql_s": sql_s, "n": row["n"], "nans": row["nans"], "rss_sql": rss_sql, "time_curve_s": time_s,
            "time_rows": len(c), "rss": self_peak_rss()}


def child_agg(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from telemetry import Archive

    t1 = time.perf_counter()
    a = Archive(task["root"])
    t2 = time.perf_counter()
    res = a.sql(AGG_SQL)
    t3 = time.perf_counter()
    warm = []
    for _ in range(task.get("repeat", 3)):
        t = time.perf_counter()
        a.sql(AGG_SQL)
        warm.append(time.perf_counter() - t)
    return {"import_s": t1 - t0, "open_s": t2 - t1, "query_s": t3 - t2, "warm_s": median(warm),
            "rows": res.num_rows, "rss": self_peak_rss()}


# ---- parent ---------------------------------------------------------------------------------

def _fail(r: Any) -> str:
    return f"failed: {r.error}"


def bench_curve(work: Path, sizes: list[int], timeout: float) -> str:
    rows, budget_rows, scan_rows = [], [], []
    query_peaks: list[int] = []  # peak RSS of every process that queried the largest series
    has_compaction = _importable("telemetry.maintain.compaction")
    for n in sizes:
        root = str(work / f"series-{n}")
        b = run_child(MODULE, {"task": "build_series", "root": root, "points": n}, timeout_s=max(timeout, 1800))
        if not b.ok:
            rows.append([f"{n:,}", "build", _fail(b), "", "", "", "", "", ""])
            continue
        variants = [("raw segments", b.data["bytes"], None)]
        results = []
        for label, disk, comp in variants:
            results.append((label, disk, comp, run_child(MODULE, {"task": "curve", "root": root, "points": n},
                                                           timeout_s=timeout)))
        if has_compaction:
            comp = run_child(MODULE, {"task": "compact", "root": root, "run": RUN}, timeout_s=max(timeout, 1800))
            disk = flightlog_live_bytes(root)
            lod = tree_bytes(os.path.join(root, "metrics_lod"), "*.parquet")
            results.append(("compacted + LOD", disk, (comp, lod),
                            run_child(MODULE, {"task": "curve", "root": root, "points": n}, timeout_s=timeout)))
        for label, disk, comp, r in results:
            extra = ""
            if comp is not None:
                c, lod = comp
                extra = (f"compaction {fmt_s(c.data.get('compact_s'))}, {fmt_bytes(c.peak_rss)} RSS; LOD "
                         f"{lod / n:.2f} B/pt{_problems(c)}") if c.ok else _fail(c)
            if not r.ok:
                rows.append([f"{n:,}", label, _fail(r), "", "", "", "", "", extra])
                continue
            d = r.data
            cold = d["open_s"] + d["curve_s"]
            if n == max(sizes):
                query_peaks.append(r.peak_rss)
            summary("curve", f"2,000-bucket curve over {n / 1e6:g} M points, {label}: cold / warm",
                    f"{fmt_s(cold)} / {fmt_s(d['warm_s'])}", "budget ≤ 1 s / ≤ 100 ms", None, r.peak_rss)
            rows.append([f"{n:,}", label, f"{fmt_s(cold)} (import {fmt_s(d['import_s'])})", fmt_s(r.wall_s),
                         fmt_s(d["warm_s"]) + (f" (after the reader's {fmt_s(d['background_s'])} background LOD)"
                                               if d.get("background_s", 0) > 0.05 else ""),
                         fmt_s(d["window_s"]), fmt_bytes(r.peak_rss),
                         f"{fmt_bytes(disk)} ({disk / n:.2f} B/pt)", extra])
            if n == 10_000_000 or n == min(sizes):
                tag = f"{n / 1e6:g} M points, {label}"
                if comp is not None:
                    budget_rows.append([f"≤ 4 B/point, loss-like series after compaction ({tag}; LOD apart)",
                                        f"{disk / n:.2f} B", verdict(disk / n <= 4)])
                budget_rows.append([f"curve cold ≤ 1 s ({tag})", fmt_s(cold), verdict(cold <= 1.0)])
                budget_rows.append([f"curve warm ≤ 100 ms ({tag})", fmt_s(d["warm_s"]), verdict(d["warm_s"] <= 0.1)])
        if n == max(sizes):
            s = run_child(MODULE, {"task": "scan", "root": root}, timeout_s=max(timeout, 1800))
            if s.ok:
                query_peaks.append(s.peak_rss)
                scan_rows.append([f"{n:,}-point series, compacted: full-scan SQL over `journey_metrics` "
                                  f"({s.data['n']:,} rows, {s.data['nans']} NaN)", fmt_s(s.data["sql_s"]),
                                  fmt_bytes(s.data["rss_sql"])])
                scan_rows.append(["... then `curve(x=\"time\")` (no LOD: scans every point)",
                                  fmt_s(s.data["time_curve_s"]), fmt_bytes(s.peak_rss)])
                budget_rows.append([f"{n / 1e6:g} M-point archive queried within 24 GiB (largest peak RSS of "
                                    "the processes that queried it)", fmt_bytes(max(query_peaks)),
                                    verdict(max(query_peaks) <= 24 * GIB)])
            else:
                scan_rows.append(["full scan", _fail(s), ""])
    out = ["### 2,000-bucket curve of one series\n",
           md_table(["points", "files", "cold: open + curve", "cold: process wall", "warm (same curve)",
                     "warm (new half window)", "peak RSS", "on disk", "notes"], rows, "rlrrrrrrl")]
    out.append("\ncold = a new process: `Archive(url)` + first `curve()` (import shown apart; process wall adds "
               "interpreter start and imports). Raw segments: 1 M-row parts as a writer leaves them.")
    if scan_rows:
        out += ["", md_table(["full scan", "time", "peak RSS"], scan_rows)]
    out += ["", md_table(["budget", "measured", "verdict"], budget_rows)]
    return "\n".join(out)


def _problems(r: Any) -> str:
    probs = r.data.get("problems") or []
    return f"; problems: {'; '.join(str(p)[:120] for p in probs)}" if probs else ""


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def bench_agg(work: Path, runs: int, steps: int, timeout: float) -> str:
    root = str(work / f"runs-{runs}x{steps}")
    b = run_child(MODULE, {"task": "build_runs", "root": root, "runs": runs, "steps": steps},
                  timeout_s=max(timeout, 1800))
    if not b.ok:
        return f"### Cross-run aggregate\n\nbuild failed: {b.error}"
    results = [("raw segments", b.data["bytes"], None,
                run_child(MODULE, {"task": "agg", "root": root}, timeout_s=timeout))]
    if _importable("telemetry.maintain.compaction"):
        comp = run_child(MODULE, {"task": "compact", "root": root}, timeout_s=max(timeout, 3600))
        results.append(("compacted + LOD", flightlog_live_bytes(root), comp,
                        run_child(MODULE, {"task": "agg", "root": root}, timeout_s=timeout)))
    rows = []
    for label, disk, comp, r in results:
        note = "" if comp is None else (f"compaction {fmt_s(comp.data.get('compact_s'))}, "
                                        f"{fmt_bytes(comp.peak_rss)} RSS{_problems(comp)}" if comp.ok
                                        else _fail(comp))
        if not r.ok:
            rows.append([label, _fail(r), "", "", "", "", note])
            continue
        d = r.data
        rows.append([label, fmt_s(d["open_s"]), fmt_s(d["query_s"]), fmt_s(d["warm_s"]), f"{d['rows']:,}",
                     fmt_bytes(r.peak_rss), f"{fmt_bytes(disk)} ({disk / (runs * steps):.2f} B/pt)", note])
    return "\n".join([
        f"### Cross-run aggregate: {runs:,} runs × {steps:,} steps ({runs * steps:,} points)\n",
        f"`{AGG_SQL}` through `Archive.sql`, in a new process (open = `Archive(url)`: listing, recovery scan, views)."
        "\n",
        md_table(["archive", "open", "query (cold)", "query (warm)", "rows", "peak RSS", "on disk", "notes"], rows),
    ])


def main(argv: list[str] | None = None) -> int:
    task = child_task(argv)
    if task is not None:
        fn = {"build_series": child_build_series, "build_runs": child_build_runs, "compact": child_compact,
              "curve": child_curve, "scan": child_scan, "agg": child_agg}[task["task"]]
        emit(fn(task))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 M / 10 M points, 50 runs x 10 k steps")
    ap.add_argument("--only", default="curve", help="curve, agg or both (the 1,000-run aggregate of the "
                    "report is bench_cross_run's, which generates its archive much faster)")
    ap.add_argument("--sizes", default=None, help="comma-separated series sizes (default 10M,100M)")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the archives (only with --dir)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measuring child")
    args = ap.parse_args(argv)
    sizes = [int(float(x)) for x in args.sizes.split(",")] if args.sizes else (
        [1_000_000, 10_000_000] if args.quick else [10_000_000, 100_000_000])
    runs = args.runs or (50 if args.quick else 1000)
    steps = args.steps or (10_000 if args.quick else 100_000)
    work = Path(args.dir or tempfile.mkdtemp(prefix="flightlog-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",")}
    print(f"flightlog at scale{' (--quick)' if args.quick else ''}: {machine_note()}\n")
    t = time.perf_counter()
    try:
        if "curve" in only:
            print(bench_curve(work, sizes, args.timeout) + "\n", flush=True)
        if "agg" in only:
            print(bench_agg(work, runs, steps, args.timeout) + "\n", flush=True)
    finally:
        if not (args.dir and args.keep):
            shutil.rmtree(work, ignore_errors=True)
    print(f"({time.perf_counter() - t:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
