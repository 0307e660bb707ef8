"""Cross-run aggregate: per-run min loss, last loss and NaN count over 1,000 runs x 100 k steps.

    python -m bench.bench_cross_run [--quick] [--runs N] [--steps N] [--dir DIR] [--keep]

The archive is generated fast: each run is one Parquet file written straight in the archive
layout with the compacted files' settings (`telemetry.maintain.compaction.compact_bytes`: sorted, zstd,
BYTE_STREAM_SPLIT values, DELTA_BINARY_PACKED steps and times), by two worker processes, so
building 100 M points takes about a minute instead of a writer run per run plus compaction.
Every query runs in a fresh interpreter (bench._harness.run_child) whose peak RSS is reported:
cold (import, `Archive(url)`, first query) and warm (the same query again), over the `metrics`
view and over `journey_metrics` (the attempts stitched together).

`--quick`: 100 runs x 100 k steps (10 M points).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench._harness import (
    GIB,
    child_task,
    emit,
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

MODULE = "bench.bench_cross_run"
QUERY = ("SELECT run_id, min(value) FILTER (WHERE isfinite(value)) AS min_loss, arg_max(value, step) AS last_loss, "
         "count(*) FILTER (WHERE isnan(value)) AS nan_count FROM {view} WHERE name = 'loss' GROUP BY run_id")


# ---- data -------------------------------------------------------------------------------------

def _write_runs(task: tuple[str, list[int], int]) -> int:
    """Write the given runs (one compact-layout file each); bytes written."""
    from bench.bench_scale import _segment
    from data_schema.layout import segment_path
    from data_schema.validation import conform
    from telemetry.maintain.compaction import CompactionConfig, compact_bytes

    root, indices, steps = task
    cfg, total = CompactionConfig(), 0
    for i in indices:
        run_id = f"run-{i:04d}"
        body = compact_bytes(conform("metrics", _segment(run_id, 0, steps, steps, 7919 * i + 1), strict=False), cfg)
        path = os.path.join(root, segment_path("metrics", run_id, 0, 0, 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(memoryview(body))
        total += body.size
    return total


def build(root: str, runs: int, steps: int, workers: int = 2) -> tuple[float, int]:
    from telemetry.store.fs import ensure_root_file, open_fs

    os.makedirs(root, exist_ok=True)
    ensure_root_file(*open_fs(root))
    t = time.perf_counter()
    chunks = [(root, list(range(w, runs, workers)), steps) for w in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(_write_runs, chunks))
    return time.perf_counter() - t, written


# ---- measuring child ------------------------------------------------------------------------

def child_query(task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from telemetry import Archive

    t1 = time.perf_counter()
    a = Archive(task["root"])
    t2 = time.perf_counter()
    sql = QUERY.format(view=task["view"])
    res = a.sql(sql)
    t3 = time.perf_counter()
    warm = []
    for _ in range(task.get("repeat", 2)):
        t = time.perf_counter()
        a.sql(sql)
        warm.append(time.perf_counter() - t)
    nans = sum(res.column("nan_count").to_pylist())
    return {"import_s": t1 - t0, "open_s": t2 - t1, "query_s": t3 - t2, "warm_s": median(warm),
            "rows": res.num_rows, "nans": nans, "rss": self_peak_rss()}


# ---- parent ---------------------------------------------------------------------------------

def measure(runs: int, steps: int, work: Path, timeout: float) -> tuple[str, list[list[str]]]:
    """(Markdown section, budget rows)."""
    root = str(work / f"runs-{runs}x{steps}")
    build_s, written = build(root, runs, steps)
    points = runs * steps
    rows, budget = [], []
    for view in ("metrics", "journey_metrics"):
        r = run_child(MODULE, {"task": "query", "root": root, "view": view}, timeout_s=timeout)
        if not r.ok:
            rows.append([f"`{view}`", f"failed: {r.error}", "", "", "", "", ""])
            continue
        d = r.data
        rows.append([f"`{view}`", fmt_s(d["open_s"]), fmt_s(d["query_s"]), fmt_s(d["warm_s"]),
                     f"{d['rows']:,} ({d['nans']} NaN)", fmt_bytes(r.peak_rss), fmt_s(r.wall_s)])
        summary("cross-run aggregate", f"per-run min/last loss and NaN count, {runs:,} runs × {steps:,} steps "
                f"via `{view}`: cold / warm", f"{fmt_s(d['open_s'] + d['query_s'])} / {fmt_s(d['warm_s'])}", "", None,
                r.peak_rss)
        budget.append([f"{points / 1e6:g} M-point archive ({runs:,} runs) queried within 24 GiB (`{view}`)",
                       fmt_bytes(r.peak_rss), verdict(r.peak_rss <= 24 * GIB)])
    disk = tree_bytes(os.path.join(root, "metrics"), "*.parquet")
    text = "\n".join([
        f"### Cross-run aggregate: {runs:,} runs × {steps:,} steps ({points:,} points)\n",
        f"`{QUERY.format(view='<view>')}` through `Archive.sql` in a new process. Archive generated in "
        f"{fmt_s(build_s)} (one compact-layout file per run, 2 processes); {fmt_bytes(disk)} on disk "
        f"({disk / points:.2f} B/point).\n",
        md_table(["view", "open", "query (cold)", "query (warm)", "rows", "peak RSS", "process wall"], rows),
    ])
    return text, budget


def main(argv: list[str] | None = None) -> int:
    task = child_task(argv)
    if task is not None:
        emit({"query": child_query}[task["task"]](task))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 runs x 100 k steps")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the archive (only with --dir)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per measuring child")
    args = ap.parse_args(argv)
    runs = args.runs or (100 if args.quick else 1000)
    steps = args.steps or 100_000
    work = Path(args.dir or tempfile.mkdtemp(prefix="flightlog-bench-cross-run-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"flightlog cross-run aggregate{' (--quick)' if args.quick else ''}: {machine_note()}\n")
    t = time.perf_counter()
    try:
        text, budget = measure(runs, steps, work, args.timeout)
        print(text + "\n")
        print(md_table(["budget", "measured", "verdict"], budget) + "\n", flush=True)
    finally:
        if not (args.dir and args.keep):
            shutil.rmtree(work, ignore_errors=True)
    print(f"({time.perf_counter() - t:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
