"""Benchmark: compaction and level-of-detail curves on a loss-like series.

Writes N points of one 'loss' series through `Writer` (fp32 losses, noisy decay, ~0.3 s steps
with 2 ms jitter, as bench_writer's loss-like curve), compacts the run, builds its LOD, then
times a 2,000-bucket `Archive.curve` cold (a new process) and warm, before and after
compaction. Budgets: ≤ 4 B/point after compaction, curve ≤ 100 ms warm and ≤ 1 s cold.

    python -m bench.bench_lod [--points 10000000] [--dir /tmp/flightlog-bench-lod] [--repeat 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq

RUN = "bench-lod"
CHUNK = 1_000_000

COLD = """
import json, sys, time
t0 = time.perf_counter()
from telemetry import Archive
a = Archive(sys.argv[1], recover=False)
c = a.curve(sys.argv[2], "loss", buckets=2000)
print(json.dumps({"s": time.perf_counter() - t0, "rows": len(c)}))
"""


def series(points: int):
    """(steps, fp32 losses as float, wall times in Unix seconds with µs digits) in chunks of CHUNK."""
    rng = np.random.default_rng(0)
    wall0 = 1.7e9
    for start in range(0, points, CHUNK):
        steps = np.arange(start, min(points, start + CHUNK))
        loss = (2.2 * np.exp(-steps / (points / 7)) + 1.9 + rng.normal(0, 0.03, len(steps)))
        loss = loss.astype(np.float32).astype(float)
        loss[rng.integers(0, len(steps), 2)] = np.nan
        loss[rng.integers(0, len(steps), 1)] = 50.0
        wall = wall0 + np.cumsum(0.3 + rng.normal(0, 0.002, len(steps)))
        wall0 = float(wall[-1])
        yield steps, loss, wall


def write(root: str, points: int) -> float:
    from telemetry import Writer, WriterConfig

    w = Writer(root, RUN, writer_config=WriterConfig(queue_size=2 * CHUNK, compact_on_close=False))
    t = time.perf_counter()
    for steps, loss, wall in series(points):
        metric = w.metric
        for s, v, wt in zip(steps.tolist(), loss.tolist(), wall.tolist(), strict=True):
            metric(s, "loss", v, wt)
        while not w.flush(60):
            pass
    w.close()
    return time.perf_counter() - t


def micros_bytes_per_point(cfile: str, points: int) -> float:
    """B/point of the first compact file had the writer kept µs (metrics_wall_time_resolution_us=1):
    the same rows (one name, sorted by step 0..n-1) with the series' µs wall times put back."""
    from telemetry.maintain.compaction import CompactionConfig, compact_bytes
    from telemetry.write.record_batches import timestamps as _timestamps

    data = pq.read_table(cfile)
    n = data.num_rows
    assert data.column("step").to_numpy()[-1] == n - 1, "expected steps 0..n-1 in the first compact file"
    wall = np.concatenate([w for _, _, w in series(points)])[:n]
    data = data.set_column(data.column_names.index("wall_time"), "wall_time", _timestamps(wall, 1).cast(
        data.schema.field("wall_time").type))
    return compact_bytes(data, CompactionConfig()).size / n


def metric_bytes(root: str, pattern: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(root, "metrics", "run_id=*", pattern)))


def column_bytes(path: str) -> dict[str, int]:
    md = pq.ParquetFile(path).metadata
    out: dict[str, int] = {}
    for g in range(md.num_row_groups):
        for i in range(md.num_columns):
            c = md.row_group(g).column(i)
            out[c.path_in_schema] = out.get(c.path_in_schema, 0) + c.total_compressed_size
    return out


def time_curves(root: str, repeat: int, points: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", COLD, root, RUN], capture_output=True, text=True, check=True)
    cold = json.loads(proc.stdout.strip().splitlines()[-1])["s"]
    from telemetry import Archive

    a = Archive(root, recover=False)
    a.curve(RUN, "loss", buckets=2000)
    a.wait_background()  # raw segments: the reader builds their LOD after the first slow curve
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        a.curve(RUN, "loss", buckets=2000)
        warm.append(time.perf_counter() - t)
    window = []
    for i in range(repeat):  # a new half-range window each time: nothing cached
        lo = (i * points) // (2 * repeat)
        t = time.perf_counter()
        a.curve(RUN, "loss", buckets=2000, lo=lo, hi=lo + points // 2)
        window.append(time.perf_counter() - t)
    a.close()
    return {"cold": cold, "warm": statistics.median(warm), "window": statistics.median(window)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=10_000_000)
    p.add_argument("--dir", default="/tmp/flightlog-bench-lod")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--skip-raw", action="store_true", help="do not time curves before compaction")
    args = p.parse_args(argv)
    root = os.path.join(args.dir, f"archive-{args.points}")
    shutil.rmtree(root, ignore_errors=True)
    n = args.points

    write_s = write(root, n)
    parts = metric_bytes(root, "part-*")
    before = None if args.skip_raw else time_curves(root, args.repeat, n)

    from telemetry.maintain.compaction import CompactionConfig, compact
    from telemetry.maintain.lod_build import rebuild_lod
    from telemetry.store.fs import open_fs

    report = compact(root, RUN, grace_s=3600, config=CompactionConfig(lod=False), tables=["metrics"])
    t = time.perf_counter()
    lod_rows = rebuild_lod(*open_fs(root), RUN)
    lod_s = time.perf_counter() - t
    (cfile, *more) = sorted(glob.glob(os.path.join(root, "metrics", "run_id=*", "compact-*")))
    compacted = metric_bytes(root, "compact-*")
    cols = column_bytes(cfile)
    # the same first file had the writer kept µs wall times (an option, not the default)
    us_bpp = micros_bytes_per_point(cfile, n)
    lod_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(root, "metrics_lod", "*", "*.parquet")))
    after = time_curves(root, args.repeat, n)
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)

    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    rows_first = pq.read_metadata(cfile).num_rows
    print(f"\n{n:,}-point loss-like series, 1 rank; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"peak RSS {rss / 1024:.0f} MB\n")
    print("| measurement | value | budget |")
    print("|---|---|---|")
    print(f"| write through Writer (incl. close) | {write_s:.1f} s ({n / write_s / 1e6:.2f} M points/s) | — |")
    print(f"| bytes/point, writer segments | {parts / n:.2f} B | — |")
    print(f"| bytes/point, compacted (wall_time in ms, the default) | {compacted / n:.2f} B "
          f"(value {cols['value'] / rows_first:.2f}, wall_time {cols['wall_time'] / rows_first:.2f}, "
          f"step {cols['step'] / rows_first:.2f}) | ≤ 4 B |")
    print(f"| bytes/point, compacted, wall_time in µs (option: metrics_wall_time_resolution_us=1) | "
          f"{us_bpp:.2f} B | — |")
    print(f"| compaction (metrics, {report.files_written} file(s)) | {report.seconds:.1f} s "
          f"({report.rows / report.seconds / 1e6:.2f} M rows/s) | — |")
    print(f"| LOD build | {lod_s:.1f} s, {lod_rows:,} rows, {lod_bytes / 1e6:.1f} MB "
          f"({lod_bytes / n:.2f} B/point) | — |")
    if before:
        print(f"| curve 2,000 buckets, raw segments: cold new process / warm / window | {ms(before['cold'])} / "
              f"{ms(before['warm'])} / {ms(before['window'])} | ≤ 1 s / ≤ 100 ms |")
    print(f"| curve 2,000 buckets, compacted + LOD: cold new process / warm / window | {ms(after['cold'])} / "
          f"{ms(after['warm'])} / {ms(after['window'])} | ≤ 1 s / ≤ 100 ms |")
    del more


if __name__ == "__main__":
    main()
