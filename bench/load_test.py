"""Load: many writer processes log while reader processes query the same archive.

Each writer (one process per rank) logs `metrics` names per step for `steps` steps through
`Writer.metrics`; each reader (one process each) opens `Archive(url)` like the app does and,
until the writers are done, refreshes it and asks for a curve and a SQL aggregate in a loop.
Afterwards the archive is counted: every offered point is either a row or counted in a
`dropped_records` event (written + dropped == offered, per rank, no duplicates), no reader saw
an error, and each process's peak RSS is reported.

    python -m bench.load_test                      # 8 writers x 200 metrics x 10k steps, 4 readers
    python -m bench.load_test --writers 4 --metrics 50 --steps 1000 --readers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

RUN = "load"
MIB = 1024 * 1024


@dataclass(slots=True)
class LoadResult:
    writers: list[dict[str, Any]] = field(default_factory=list)  # per rank: offered, dropped, seconds, peak_rss
    readers: list[dict[str, Any]] = field(default_factory=list)  # per reader: loops, errors, peak_rss
    rows_by_rank: dict[int, int] = field(default_factory=dict)
    dropped_events_by_rank: dict[int, int] = field(default_factory=dict)
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def offered(self) -> int:
        return sum(w["offered"] for w in self.writers)

    @property
    def written(self) -> int:
        return sum(self.rows_by_rank.values())

    @property
    def dropped(self) -> int:
        return sum(self.dropped_events_by_rank.values())

    @property
    def reader_errors(self) -> list[str]:
        return [e for r in self.readers for e in r["errors"]]

    def problems(self) -> list[str]:
        """What broke a promise (empty: all kept)."""
        out = [f"reader error: {e}" for e in self.reader_errors]
        out += [f"writer rank {w['rank']} failed: {w['error']}" for w in self.writers if w.get("error")]
        for w in self.writers:
            r = w["rank"]
            got = self.rows_by_rank.get(r, 0) + self.dropped_events_by_rank.get(r, 0)
            if got != w["offered"]:
                out.append(f"rank {r}: written {self.rows_by_rank.get(r, 0)} + dropped "
                           f"{self.dropped_events_by_rank.get(r, 0)} != offered {w['offered']}")
            if w["dropped"] != self.dropped_events_by_rank.get(r, 0):
                out.append(f"rank {r}: the writer counted {w['dropped']} dropped, events say "
                           f"{self.dropped_events_by_rank.get(r, 0)}")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicated (rank, step, name) rows")
        return out


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def writer_main(url: str, rank: int, world: int, metrics: int, steps: int, queue_size: int | None,
                step_time_s: float, start: Any, out: Any) -> None:
    from telemetry import Writer, WriterConfig

    try:
        cfg = WriterConfig(flush_interval_s=0.5, segment_interval_s=5.0, close_timeout_s=120.0,
                           **({"queue_size": queue_size} if queue_size else {}))
        names = [f"m{j:03d}" for j in range(metrics)]
        start.wait()  # every process imported: the load starts at once
        t0 = time.perf_counter()
        w = Writer(url, run=RUN, rank=rank, attempt=0, world_size=world, writer_config=cfg)
        for step in range(steps):
            base = step * 1e-3
            w.metrics(step, {n: base + j for j, n in enumerate(names)})
            if step_time_s:
                time.sleep(step_time_s)  # a trainer's step: lets readers overlap a small run
        w.close()
        out.put({"rank": rank, "offered": metrics * steps, "dropped": int(w.dropped),
                 "seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        out.put({"rank": rank, "offered": metrics * steps, "dropped": 0, "seconds": 0.0, "peak_rss": _peak_rss(),
                 "error": "".join(traceback.format_exception_only(exc)).strip()})


def reader_main(url: str, index: int, start: Any, stop: Any, out: Any) -> None:
    from telemetry import Archive

    loops, errors, archive = 0, [], None
    start.wait()
    _wait_for_archive(url, time.time() + 60)
    while not stop.is_set() or loops == 0:
        try:
            if archive is None or loops % 20 == 0:  # a fresh open now and then, like a new app session
                if archive is not None:
                    archive.close()
                archive = Archive(url)
            archive.refresh()
            if RUN in set(archive.runs()["run_id"]):
                archive.curve(RUN, "m000", buckets=500)
                archive.curve(RUN, "m001", buckets=50, rank=0, lo=0)
            archive.sql("SELECT rank, count(*) AS n, max(step) AS last FROM metrics GROUP BY rank")
            loops += 1
        except Exception as exc:  # noqa: BLE001 - every error is the finding: collected, reported
            errors.append(f"reader {index}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            loops += 1
            if len(errors) > 20:
                break
            time.sleep(0.1)
    if archive is not None:
        archive.close()
    out.put({"reader": index, "loops": loops, "errors": errors, "peak_rss": _peak_rss()})


def _wait_for_archive(url: str, deadline: float) -> None:
    while time.time() < deadline and not os.path.exists(os.path.join(url, "flightlog.json")):
        time.sleep(0.05)


def run_load(url: str, *, writers: int = 8, metrics: int = 200, steps: int = 10_000, readers: int = 4,
             queue_size: int | None = None, step_time_s: float = 0.0, timeout_s: float = 3600.0) -> LoadResult:
    """Run the load and count the archive afterwards (see the module docstring)."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited threads, DuckDB or locks
    start = ctx.Barrier(writers + readers + 1)
    stop = ctx.Event()
    wq, rq = ctx.Queue(), ctx.Queue()
    wprocs = [ctx.Process(target=writer_main, name=f"load-writer-{r}",
                          args=(url, r, writers, metrics, steps, queue_size, step_time_s, start, wq))
              for r in range(writers)]
    rprocs = [ctx.Process(target=reader_main, args=(url, i, start, stop, rq), name=f"load-reader-{i}")
              for i in range(readers)]
    for p in wprocs + rprocs:
        p.start()
    start.wait(timeout=300)
    t0 = time.perf_counter()
    result = LoadResult()
    deadline = time.time() + timeout_s
    try:
        for _ in wprocs:
            result.writers.append(wq.get(timeout=max(1.0, deadline - time.time())))
    finally:
        stop.set()
        for _ in rprocs:
            try:
                result.readers.append(rq.get(timeout=120))
            except Exception:  # noqa: BLE001 - a reader that never answers is an error of its own
                result.readers.append({"reader": -1, "loops": 0, "errors": ["a reader did not finish"], "peak_rss": 0})
        for p in wprocs + rprocs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    result.seconds = time.perf_counter() - t0
    result.writers.sort(key=lambda w: w["rank"])
    _count(url, result)
    return result


def _count(url: str, result: LoadResult) -> None:
    from telemetry import Archive

    with Archive(url) as a:
        for r in a.sql("SELECT rank, count(*) AS n FROM metrics GROUP BY rank").to_pylist():
            result.rows_by_rank[int(r["rank"])] = int(r["n"])
        for r in a.sql("SELECT rank, sum(CAST(json_extract(details_json, '$.dropped') AS BIGINT)) AS n FROM events "
                       "WHERE kind = 'dropped_records' GROUP BY rank").to_pylist():
            result.dropped_events_by_rank[int(r["rank"])] = int(r["n"] or 0)
        dup = a.sql("SELECT count(*) - count(DISTINCT (rank, step, name)) FROM metrics").column(0)[0].as_py()
        result.duplicates = int(dup)


def table(result: LoadResult) -> str:
    lines = ["| process | points offered | written | dropped | seconds | loops | errors | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for w in result.writers:
        r = w["rank"]
        lines.append(f"| writer {r} | {w['offered']:,} | {result.rows_by_rank.get(r, 0):,} | "
                     f"{result.dropped_events_by_rank.get(r, 0):,} | {w['seconds']:.1f} | | "
                     f"{1 if w.get('error') else 0} | {w['peak_rss'] / MIB:.0f} |")
    for rd in sorted(result.readers, key=lambda r: r["reader"]):
        lines.append(f"| reader {rd['reader']} | | | | | {rd['loops']} | {len(rd['errors'])} "
                     f"| {rd['peak_rss'] / MIB:.0f} |")
    lines.append(f"| **total** | {result.offered:,} | {result.written:,} | {result.dropped:,} | "
                 f"{result.seconds:.1f} | | {len(result.reader_errors)} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--metrics", type=int, default=200, help="names per step")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--readers", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=None, help="WriterConfig.queue_size (default: the writer's)")
    p.add_argument("--step-time", type=float, default=0.0, metavar="SECONDS", help="sleep per step (default: none)")
    p.add_argument("--archive", default=None, help="where to write (default: a temporary folder, removed after)")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flightlog-load-") as tmp:
        url = args.archive or os.path.join(tmp, "archive")
        result = run_load(url, writers=args.writers, metrics=args.metrics, steps=args.steps, readers=args.readers,
                          queue_size=args.queue_size, step_time_s=args.step_time)
    print(f"load: {args.writers} writers x {args.metrics} metrics x {args.steps:,} steps, {args.readers} readers")
    print(table(result))
    if args.json:
        print(json.dumps(asdict(result)))
    problems = result.problems()
    for line in problems:
        print(f"PROBLEM: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
