"""Writer throughput (points/s, one process), host cost per metric() call, bytes per point on disk.

Bytes per point are those of a 1M-step loss-like curve, in its writer segment and after the
compaction close() runs, with metric wall times at the default millisecond resolution and at µs.

    python -m bench.bench_writer [--points 10000000]

Prints a Markdown table. Numbers, not pass/fail: compare against ARCHITECTURE.md budgets.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from telemetry import Writer, WriterConfig

NAMES = ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s")


def _config(points: int) -> WriterConfig:
    return WriterConfig(queue_size=max(1_000_000, points // 2), flush_interval_s=2.0)


def bench_metric(root: str, points: int) -> tuple[float, float, int]:
    """(points written per s including the final close, ns per call while logging, points dropped)."""
    w = Writer(root, "bench-metric", writer_config=_config(points))
    metric = w.metric
    steps = points // len(NAMES)
    t0 = time.perf_counter()
    for step in range(steps):
        for name in NAMES:
            metric(step, name, 0.5)
    t1 = time.perf_counter()
    w.close()
    t2 = time.perf_counter()
    return (steps * len(NAMES) - w.dropped) / (t2 - t0), (t1 - t0) / (steps * len(NAMES)) * 1e9, w.dropped


def bench_metrics(root: str, points: int) -> tuple[float, int]:
    w = Writer(root, "bench-metrics", writer_config=_config(points))
    log = w.metrics
    steps = points // len(NAMES)
    t0 = time.perf_counter()
    for step in range(steps):
        log(step, {"loss": 2.0, "grad_norm": 1.0, "lr": 3e-4, "tokens_per_s": 1e5, "step_time_s": 0.3})
    w.close()
    return (steps * len(NAMES) - w.dropped) / (time.perf_counter() - t0), w.dropped


def host_cost_ns(root: str, calls: int = 1_000_000) -> tuple[float, float]:
    """ns per metric() call with the flush thread idle (long interval), minus the bare loop."""
    w = Writer(root, "bench-host", writer_config=WriterConfig(queue_size=calls, flush_interval_s=3600))
    metric = w.metric
    t0 = time.perf_counter()
    for i in range(calls):
        metric(i, "loss", 0.5)
    t1 = time.perf_counter()
    for _i in range(calls):
        pass
    t2 = time.perf_counter()
    w.close()
    per_call = (t1 - t0) / calls * 1e9
    return per_call, per_call - (t2 - t1) / calls * 1e9


def bytes_per_point(root: str, steps: int = 1_000_000, resolution_us: int | None = None) -> dict[str, dict[str, float]]:
    """A loss-like curve (fp32 losses with σ=0.03 noise on a decay, ~0.3 s steps with 2 ms jitter,
    wall times given to the µs) written through `Writer` with its defaults (metric wall times stored
    to the millisecond), or with `metrics_wall_time_resolution_us=resolution_us`, and compacted on close
    -> {"segment": ..., "compacted": ...}: bytes/point of the files and of each column."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    loss = (2.2 * np.exp(-t / 150_000) + 1.9 + rng.normal(0, 0.03, steps)).astype(np.float32).astype(float)
    wall = 1.7e9 + np.cumsum(0.3 + rng.normal(0, 0.002, steps))
    extra = {} if resolution_us is None else {"metrics_wall_time_resolution_us": resolution_us}
    w = Writer(root, "bench-bytes", writer_config=WriterConfig(queue_size=steps, segment_rows=10 * steps, **extra))
    for s, v, wt in zip(t.tolist(), loss.tolist(), wall.tolist(), strict=True):
        w.metric(s, "loss", v, wall_time=wt)
    w.close()  # one segment; rank 0 compacts it on close (the segment stays until the grace period ends)
    out = {}
    for kind, pattern in (("segment", "part-*.parquet"), ("compacted", "compact-*.parquet")):
        files = glob.glob(os.path.join(root, "metrics", "run_id=bench-bytes", pattern))
        sizes = {"file": sum(os.path.getsize(f) for f in files) / steps}
        for f in files:
            meta = pq.ParquetFile(f).metadata
            for rg in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    col = meta.row_group(rg).column(c)
                    sizes[col.path_in_schema] = sizes.get(col.path_in_schema, 0) + col.total_compressed_size / steps
        out[kind] = sizes
    return out


def _bpp_rows(label: str, bpp: dict[str, dict[str, float]]) -> list[str]:
    rows = []
    for kind, sizes in bpp.items():
        sizes = dict(sizes)
        rows.append(f"| bytes/point, 1M-step loss curve, {label}, {kind} | {sizes.pop('file'):.2f} B |")
        rows.append("| ... per column | " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        thr, ns_during, dropped = bench_metric(os.path.join(tmp, "a"), args.points)
        thr_multi, dropped_multi = bench_metrics(os.path.join(tmp, "b"), args.points)
        ns_call, ns_net = host_cost_ns(os.path.join(tmp, "c"))
        bpp = bytes_per_point(os.path.join(tmp, "d"))
        bpp_us = bytes_per_point(os.path.join(tmp, "e"), resolution_us=1)
    print(f"| writer ({args.points:,} points, one process) | value |")
    print("|---|---|")
    print(f"| written via metric(), incl. close | {thr / 1e6:.2f} M points/s ({dropped:,} dropped) |")
    print(f"| written via metrics() (5 names/call), incl. close | {thr_multi / 1e6:.2f} M points/s "
          f"({dropped_multi:,} dropped) |")
    print(f"| metric() while the flush thread works | {ns_during:.0f} ns/call |")
    print(f"| metric() host cost, flush thread idle | {ns_call:.0f} ns/call ({ns_net:.0f} ns without the loop) |")
    print("\n".join(_bpp_rows("wall_time in ms (default)", bpp)))
    print("\n".join(_bpp_rows("wall_time in µs (metrics_wall_time_resolution_us=1)", bpp_us)))
    if not math.isfinite(thr):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
