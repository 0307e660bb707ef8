"""Benchmark: a 2,000-bucket min/max curve from a 10 M-point series (budget: ≤100 ms warm, ≤1 s cold).

Builds one run with a 'loss' series as Parquet segments in the archive layout (zstd,
BYTE_STREAM_SPLIT values, DELTA_BINARY_PACKED step/wall_time, dictionary names, sorted by
step), then times `Archive.curve` cold (a new process; a new Archive in this process) and
warm (the same Archive again). Prints a Markdown table.

    python bench/bench_curve.py [--points 10000000] [--dir /tmp/flightlog-bench-curve] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema import schema, segment_path

SEGMENT_ROWS = 1_000_000
RUN = "bench-curve"


def build(root: str, points: int) -> None:
    marker = os.path.join(root, f".built-{points}")
    if os.path.exists(marker):
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "flightlog.json"), "w") as fh:
        json.dump({"format_version": 1, "created_at": "2024-01-01T00:00:00+00:00"}, fh)
    rng = np.random.default_rng(0)
    t0 = 1_700_000_000_000_000
    for seq, start in enumerate(range(0, points, SEGMENT_ROWS), start=1):
        n = min(SEGMENT_ROWS, points - start)
        steps = np.arange(start, start + n, dtype=np.int64)
        values = 2.0 + 8.0 * np.exp(-steps / (points / 5)) + rng.normal(0, 0.02, n)
        values[rng.integers(0, n, 3)] = np.nan  # NaN and a spike per segment: the data the curve must keep
        values[rng.integers(0, n, 1)] = 50.0
        table = pa.Table.from_arrays([
            pa.array(np.full(n, RUN, dtype=object), pa.string()),
            pa.array(np.zeros(n, np.int32)), pa.array(np.zeros(n, np.int32)), pa.array(steps),
            pa.array(np.full(n, "loss", dtype=object), pa.string()), pa.array(values),
            pa.array(t0 + steps * 250_000).cast(pa.timestamp("us", tz="UTC")),
        ], schema=schema("metrics"))
        path = os.path.join(root, segment_path("metrics", RUN, 0, 0, seq))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(
            table, path, compression="zstd", row_group_size=SEGMENT_ROWS, use_dictionary=["run_id", "name"],
            column_encoding={"step": "DELTA_BINARY_PACKED", "wall_time": "DELTA_BINARY_PACKED",
                             "attempt": "DELTA_BINARY_PACKED", "rank": "DELTA_BINARY_PACKED",
                             "value": "BYTE_STREAM_SPLIT"},
        )
    open(marker, "w").close()


COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from telemetry import Archive
t1 = time.perf_counter()
a = Archive(sys.argv[1], recover=False)
t2 = time.perf_counter()
c = a.curve(sys.argv[2], "loss", buckets=2000)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "curve_s": t3 - t2, "rows": len(c)}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=10_000_000)
    p.add_argument("--dir", default="/tmp/flightlog-bench-curve")
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args(argv)
    root = os.path.join(args.dir, f"archive-{args.points}")
    t = time.perf_counter()
    build(root, args.points)
    build_s = time.perf_counter() - t
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet"))

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, root, RUN], capture_output=True, text=True, check=True)
    process_s = time.perf_counter() - start
    cold_proc = json.loads(proc.stdout.strip().splitlines()[-1])

    from telemetry import Archive

    t = time.perf_counter()
    archive = Archive(root, recover=False)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    curve = archive.curve(RUN, "loss", buckets=2000)
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    archive.wait_background()  # raw segments: the reader builds their LOD after the first slow curve
    background_s = time.perf_counter() - t
    warm = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        archive.curve(RUN, "loss", buckets=2000)
        warm.append(time.perf_counter() - t)
    window = []
    for i in range(args.repeat):  # a zoomed window: a different range each time, nothing cached
        lo = (i * args.points) // (2 * args.repeat)
        t = time.perf_counter()
        archive.curve(RUN, "loss", buckets=2000, lo=lo, hi=lo + args.points // 2)
        window.append(time.perf_counter() - t)

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print(f"\n2,000-bucket curve over {args.points:,} points ({disk / 1e6:.1f} MB Parquet, "
          f"{disk / args.points:.2f} B/point; built in {build_s:.1f} s; {len(curve)} buckets, "
          f"max {curve['max'].max():g}, NaN {int(curve['nan_count'].sum())})\n")
    print("| measurement | time | budget |")
    print("|---|---|---|")
    total = cold_proc['import_s'] + cold_proc['open_s'] + cold_proc['curve_s']
    print(f"| cold, new process: import + open + curve | {ms(total)} "
          f"(import {ms(cold_proc['import_s'])}, open {ms(cold_proc['open_s'])}, "
          f"curve {ms(cold_proc['curve_s'])}) | ≤ 1 s |")
    print(f"| cold, new process incl. interpreter start | {ms(process_s)} | — |")
    print(f"| cold, new Archive in this process: open + first curve | {ms(open_s + cold_s)} "
          f"(open {ms(open_s)}, curve {ms(cold_s)}) | ≤ 1 s |")
    print(f"| background: the reader's level of detail of the segments, built after the first curve | "
          f"{ms(background_s)} | — |")
    print(f"| warm, same curve again (median of {args.repeat}) | {ms(statistics.median(warm))} "
          f"(min {ms(min(warm))}) | ≤ 100 ms |")
    print(f"| warm, a new half-range window each time (median) | {ms(statistics.median(window))} | ≤ 100 ms |")


if __name__ == "__main__":
    main()
