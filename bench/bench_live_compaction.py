"""Live compaction, measured: 64 ranks x 100 segment intervals, with rank 0's background compactor
thread (WriterConfig.live_compaction) against none, on the same machine one after the other.

Ranks are Writer instances in a few processes (16 per process); each interval every rank writes
`--steps` steps of `--metrics` names, then flushes (segment_interval_s=0: one segment per rank and
interval). A sampler counts the run's metric files every 0.25 s: on disk, and those a reader reads
(live after the compaction records). Compaction lag: the age of the oldest part a compactor could
have merged (not its writer's newest) that is still live. Host cost per step: the time the process
holding rank 0 spends in `Writer.metrics` calls and its CPU time, per step of every rank it holds.

Usage: python bench/bench_live_compaction.py [--ranks 64] [--intervals 100] [--procs 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_schema.layout import parse_path, partition_dir  # noqa: E402
from telemetry import Writer, WriterConfig  # noqa: E402
from telemetry.maintain.compaction import CompactionConfig  # noqa: E402
from telemetry.maintain.live_compactor import LivePolicy, run_in_writer  # noqa: E402
from telemetry.store.fs import list_files, modified_at, open_fs  # noqa: E402
from telemetry.store.liveness import live_filter, read_records  # noqa: E402

POLICY = LivePolicy(interval_s=0.5, min_parts=16, fanout=8, settle_s=0.5, grace_s=2.0, lod_interval_s=1e9)


def _compactor(fs, root, run_id, stop, interval_s):
    run_in_writer(fs, root, run_id, stop, interval_s=interval_s, policy=POLICY, config=CompactionConfig(lod=False))


def worker(root: str, ranks: list[int], intervals: int, steps: int, metrics: int, compactor: bool, barrier,
           out) -> None:
    conf = WriterConfig(flush_interval_s=0.01, segment_interval_s=0.0, compact_on_close=False,
                        live_compaction=compactor, live_compaction_interval_s=POLICY.interval_s)
    writers = [Writer(root, "live", rank=k, attempt=0, world_size=64, writer_config=conf,
                      live_compactor=_compactor) for k in ranks]
    names = [f"m{i}" for i in range(metrics)]
    barrier.wait()
    hot = 0.0
    cpu0 = time.process_time()
    step = 0
    for _ in range(intervals):
        for _ in range(steps):
            values = dict.fromkeys(names, 1.0)
            for w in writers:
                t = time.perf_counter()
                w.metrics(step, values)
                hot += time.perf_counter() - t
            step += 1
        for w in writers:
            w.flush()
    cpu = time.process_time() - cpu0
    for w in writers:
        w.close()
    n = step * len(writers)
    out.put({"ranks": ranks, "hot_us_per_step": hot / n * 1e6, "cpu_us_per_step": cpu / n * 1e6})


def sample(root: str) -> tuple[int, int, float]:
    """(metric files on disk, metric files a reader reads, compaction lag in s)."""
    fs, base = open_fs(root)
    files = list_files(fs, base, partition_dir("metrics", "live"), detail=True)
    keep, _ = live_filter(files, read_records(fs, base, run_id="live"))
    newest: dict[tuple, int] = {}
    for rel in keep:
        k = parse_path(rel)
        if k is not None and k.kind == "segment":
            newest[(k.attempt, k.rank)] = max(newest.get((k.attempt, k.rank), -1), k.seq)
    now = time.time()
    ages = [now - (modified_at(files[r]) or now) for r in keep
            if (k := parse_path(r)) is not None and k.kind == "segment" and newest[(k.attempt, k.rank)] != k.seq]
    return len(files), len(keep), max(ages, default=0.0)


def run(args, compactor: bool) -> dict:
    root = tempfile.mkdtemp(prefix="flightlog-livebench-")
    try:
        Writer(root, "seed", writer_config=WriterConfig(live_compaction=False)).close()
        per = args.ranks // args.procs
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(args.procs + 1), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(root, list(range(p * per, (p + 1) * per)), args.intervals,
                                                  args.steps, args.metrics, compactor, barrier, out))
                 for p in range(args.procs)]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.monotonic()
        samples = []
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                try:
                    samples.append((time.monotonic() - t0, *sample(root)))
                except (FileNotFoundError, OSError):
                    pass  # a file went between the listing and its read: the next sample counts it
                stop.wait(0.25)

        th = threading.Thread(target=sampler)
        th.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
        stop.set()
        th.join()
        wall = time.monotonic() - t0
        rank0 = next(r for r in results if 0 in r["ranks"])
        end = sample(root)
        return {"compactor": compactor, "wall_s": wall, "samples": samples, "end": end,
                "hot_us_per_step": rank0["hot_us_per_step"], "cpu_us_per_step": rank0["cpu_us_per_step"]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--intervals", type=int, default=100)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--metrics", type=int, default=8)
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    res = [run(args, False), run(args, True)]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh)
    print(f"{args.ranks} ranks x {args.intervals} intervals ({args.procs} processes, {args.steps} steps x "
          f"{args.metrics} metrics per interval); peak resident memory of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB\n")
    print("| compactor | wall s | files on disk: max / end | files read: max / end | lag max s | "
          "rank-0 process: Writer.metrics us/step | CPU us/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in res:
        disk = max((s[1] for s in r["samples"]), default=0)
        live = max((s[2] for s in r["samples"]), default=0)
        lag = max((s[3] for s in r["samples"]), default=0.0)
        print(f"| {'rank 0 thread' if r['compactor'] else 'none'} | {r['wall_s']:.1f} | {disk} / {r['end'][0]} | "
              f"{live} / {r['end'][1]} | {lag:.1f} | {r['hot_us_per_step']:.2f} | {r['cpu_us_per_step']:.0f} |")
    print("\nfiles a reader reads over time (s: none / rank 0 thread):")
    for frac in (0.1, 0.25, 0.5, 0.75, 1.0):
        row = []
        for r in res:
            t_end = r["samples"][-1][0] if r["samples"] else 0
            pick = [s for s in r["samples"] if s[0] <= frac * t_end]
            row.append(f"{pick[-1][2]}" if pick else "-")
        print(f"  {int(frac * 100):3d}% of the run: {' / '.join(row)}")


if __name__ == "__main__":
    main()
