"""Growth: a live 1,024-rank run compacted while it is written, readers during and after it, a remote
archive of 1,000 runs read by range, and how open and curve times grow with files and runs (issue 14).

    python -m bench.bench_growth [--quick] [--only a,c,d] [--dir DIR] [--keep] [--json PATH] ...

(a) Live: `--ranks` ranks (1,024) x `--intervals` segment intervals (100), simulated by real
    `telemetry.Writer` objects in `--procs` processes (4). Each interval every rank logs
    `--steps-per-interval` steps of 5 metrics, then flushes; with `segment_interval_s=0` one
    interval is one segment per rank (>= 100 k segments offered), an interval at most every
    `--min-interval-s` (3 s: 20x the default 60 s segment interval). The compactor is the sidecar
    `flightlog compact --follow` (telemetry.maintain.live_compactor.follow) in its own process; it
    starts after the first tenth of the intervals, which measure the writer with no compactor in the
    same run. Reported: files over time, compaction lag, peak memory, the writer's host cost per step.
(b) Reader at three points during (a) (at 25, 50 and 75 % of the intervals the writers wait, alive,
    while the compactor goes on) and at the end, each a new process: `Archive(url)`, `runs()`, a
    2,000-bucket loss curve cold and warm, a per-rank straggler SQL (which also checks that every
    point written is read once), and the journey page's first visit in headless Chromium (a new
    `flightlog ui` server each time; bench.bench_journey_page measures it).
(c) Remote: `--remote-runs` runs (1,000) x `--remote-steps` steps (100 k), one compact-layout file
    per run written straight as Parquet (bench.bench_cross_run.build), `flightlog index`ed, uploaded
    to a moto S3 server on loopback. A new process opens it and draws one run's loss curve; the bytes
    fetched are counted at the server (a counting TCP proxy in front of moto) and compared with that
    run's bytes plus the catalog (every object outside the run partitions).
(d) Growth: open and curve time in a new process against files (`--files`: one run, 100 segment
    intervals per rank, 10 / 100 / 1,000 ranks: 1 k, 10 k, 100 k raw segments) and against runs
    (`--runs`: 10, 100, 1,000 compact-layout runs), with the log-log slope under each table.

Every measurement has a timeout; a timed-out one is reported as a miss with what it measured so far.
The archives live in `--dir` (default: a folder in /dev/shm when it has room, else the temp folder:
the writers' fsyncs on this VM's disk would otherwise dominate the live phase). `--quick`: 16 ranks x
12 intervals, 20 remote runs x 10 k steps, files 100 / 1 k, runs 5 / 10 / 20 (under a minute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from app.ui.server import stop as stop_server
from bench._harness import (
    RESULT_PREFIX,
    ROOT,
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
    verdict,
)
from bench.bench_cross_run import build as build_runs
from bench.bench_journey_page import _peak_rss, _start_server, make_driver, time_to_interactive, wait_http
from data_schema import schema
from data_schema.layout import parse_path, segment_path
from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.live_compactor import LivePolicy, PassReport, compact_live_run, follow
from telemetry.store.encodings import segment_bytes
from telemetry.store.fs import ensure_root_file, open_fs
from telemetry.store.liveness import live_filter, read_records

MODULE = "bench.bench_growth"
RUN = "growth"
METRICS = ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s")
STRAGGLER_RANK = 5
STRAGGLER_SQL = (f"SELECT rank, median(value) AS median_step_time_s, count(*) AS n FROM metrics "
                 f"WHERE run_id = '{RUN}' AND name = 'step_time_s' GROUP BY rank ORDER BY rank")
PROGRESS_PREFIX = "GROWTH_PROGRESS "
PASS_PREFIX = "GROWTH_PASS "
BUDGET = {"open_s": 1.0, "runs_s": 0.5, "curve_cold_s": 1.0, "curve_warm_s": 0.1, "straggler_s": 1.0,
          "journey_s": 3.0, "remote_s": 2.0}
T0_US = 1_767_225_600_000_000
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "flightlog-growth"


@dataclass(slots=True)
class Sizes:
    ranks: int = 1024
    intervals: int = 100
    steps_per_interval: int = 10
    procs: int = 4
    # writers take at least this long per interval: 20x faster than the default 60 s segment interval (at
    # full speed 1,024 simulated writers on 2 shared cores write an interval every ~1.4 s, 40x, and starve the
    # compactor of the CPU it has on a real rank 0 or sidecar host)
    min_interval_s: float = 3.0
    pass_interval_s: float = 2.0        # the sidecar's seconds between passes
    grace_s: float = 30.0               # replaced files deleted this long after their swap
    remote_runs: int = 1000
    remote_steps: int = 100_000
    files: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000])
    runs: list[int] = field(default_factory=lambda: [10, 100, 1_000])
    timeout_s: float = 60.0             # per reader process
    journey_timeout_s: float = 45.0
    browser: bool = True
    journey_during: bool = True         # also visit the page at the points during (a), not only at the end


QUICK = dict(ranks=16, intervals=12, procs=2, min_interval_s=0.5, pass_interval_s=1.0, grace_s=5.0,
             remote_runs=20, remote_steps=10_000, files=[100, 1_000], runs=[5, 10, 20], timeout_s=30.0,
             journey_timeout_s=30.0, journey_during=False)


# ---- (a) the writers and the sidecar (children) ------------------------------------------------

def child_writers(task: dict[str, Any]) -> dict[str, Any]:
    """Ranks [lo, hi) of the run, one Writer each; a progress line per interval."""
    # The simulated ranks stand for 1,024 other hosts: on this machine they yield the CPU to the compactor and
    # the readers (niced), as a real rank 0's compactor thread or sidecar does not share its CPU with them.
    os.nice(10)
    root, lo, hi = task["root"], task["lo"], task["hi"]
    spi, gate = task["steps_per_interval"], task["gate"]
    cfg = WriterConfig(flush_interval_s=3600.0, segment_interval_s=0.0, live_compaction=False,
                       compact_on_close=False)  # the sidecar compacts; a flush per interval makes the segments
    writers = [Writer(root, RUN, rank=r, attempt=0, world_size=task["world"], project="bench", dp_size=task["world"],
                      writer_config=cfg) for r in range(lo, hi)]
    for r, w in zip(range(lo, hi), writers, strict=True):
        w.rank_info(local_rank=r % 8, host=f"node-{r // 8}", gpu_uuid=f"GPU-{r}", dp_rank=r)
    rng = np.random.default_rng(lo)
    step = 0
    for i in range(task["intervals"]):
        if i in task["stops"]:  # a reader point: wait, alive and unflushed, until the bench says go
            Path(task["sync"], f"held-{i}-{lo}").touch()
            while not os.path.exists(os.path.join(task["sync"], f"go-{i}")):
                time.sleep(0.05)
        on = os.path.exists(gate)
        t0, c0, hot = time.perf_counter(), time.process_time(), 0.0
        for _ in range(spi):
            loss = 2.0 + 8.0 / (1.0 + step / 200.0) + 0.05 * float(rng.standard_normal())
            vals = {"loss": loss, "grad_norm": 1.0 + abs(float(rng.standard_normal())) * 0.2,
                    "lr": 3e-4 * min(1.0, (step + 1) / 100), "tokens_per_s": 4.0e5, "step_time_s": 0.5}
            slow = {**vals, "step_time_s": 0.575}
            wall = T0_US / 1e6 + step * 0.5
            h = time.perf_counter()
            for r, w in zip(range(lo, hi), writers, strict=True):
                w.metrics(step, slow if r == STRAGGLER_RANK else vals, wall_time=wall)
            hot += time.perf_counter() - h
            step += 1
        for w in writers:  # one after the other: a process's flush threads take turns, as on separate hosts
            w.flush(timeout=120)
        left = task["min_interval_s"] - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
        print(PROGRESS_PREFIX + json.dumps({"i": i, "on": on, "wall": time.perf_counter() - t0,
                                            "cpu": time.process_time() - c0, "hot": hot}), flush=True)
    t = time.perf_counter()
    for w in writers:
        w.close(timeout=120)
    return {"close_s": time.perf_counter() - t, "dropped": sum(w.dropped for w in writers), "rss": self_peak_rss(),
            "steps": step}


def child_sidecar(task: dict[str, Any]) -> dict[str, Any]:
    """`flightlog compact --follow URL` until SIGTERM; a line per pass."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    policy = LivePolicy(interval_s=task["pass_interval_s"], settle_s=min(1.0, task["pass_interval_s"]),
                        grace_s=task["grace_s"], lod_interval_s=10 * task["pass_interval_s"])

    def on_pass(rep: PassReport) -> None:
        print(PASS_PREFIX + json.dumps({"t": time.time(), "parts": rep.parts_merged, "tiers": rep.tier_merges,
                                        "written": rep.files_written, "removed": rep.removed, "lag_s": rep.lag_s,
                                        "seconds": rep.seconds, "problems": rep.problems[:3]}), flush=True)

    total = follow(task["root"], stop, policy=policy, on_pass=on_pass)
    return {"parts": total.parts_merged, "tiers": total.tier_merges, "problems": total.problems[:5],
            "rss": self_peak_rss()}


class Child:
    """A child process whose stdout lines are read as they come (progress, passes, its result)."""

    def __init__(self, task: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", MODULE, "--child", json.dumps(task)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}
        self.peak_rss = 0
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            for prefix in (PROGRESS_PREFIX, PASS_PREFIX):
                if line.startswith(prefix):
                    self.lines.append(json.loads(line[len(prefix):]))
            if line.startswith(RESULT_PREFIX):
                self.result = json.loads(line[len(RESULT_PREFIX):])

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()  # type: ignore[union-attr]

    def running(self) -> bool:
        if self.proc.returncode is not None:
            return False
        try:  # WNOWAIT: see the exit without reaping it, so reap() gets its rusage (peak RSS)
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # reaped by reap() on another thread meanwhile
            return False

    def reap(self, timeout: float) -> bool:
        """Wait for the exit (SIGKILL after `timeout`); True if it exited by itself with status 0."""
        t_end = time.monotonic() + timeout
        while self.running() and time.monotonic() < t_end:
            time.sleep(0.1)
        killed = self.running()
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
        _, status, rusage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss = rusage.ru_maxrss * 1024
        self._reader.join(5)
        self._err.join(5)
        if self.proc.returncode != 0:
            sys.stderr.write(f"[{MODULE} child exit {self.proc.returncode}]\n{self.stderr[-3000:]}\n")
        return not killed and self.proc.returncode == 0


def count_files(root: str) -> dict[str, int]:
    """Files in the archive; metric files of the run listed, those a reader reads, raw parts among them."""
    total = sum(len(names) for _, _, names in os.walk(root))
    part = os.path.join(root, "metrics", f"run_id={RUN}")
    rels = [f"metrics/run_id={RUN}/{n}" for n in os.listdir(part) if n.endswith(".parquet")] \
        if os.path.isdir(part) else []
    fs, r = open_fs(root)
    live, _ = live_filter(rels, read_records(fs, r, run_id=RUN))
    parts = sum(1 for rel in live if (k := parse_path(rel)) is not None and k.kind == "segment")
    return {"total": total, "listed": len(rels), "live": len(live), "parts": parts}


# ---- (b) the reader (a child per point) -------------------------------------------------------

def child_reader(task: dict[str, Any]) -> dict[str, Any]:
    """Open, runs(), curve cold/warm, straggler SQL; the figures so far are emitted after each step so a
    timed-out process still tells what it measured."""
    out: dict[str, Any] = {}
    t = time.perf_counter()
    a = Archive(task["root"], **({"storage_options": task["storage_options"], "cache_dir": task["cache_dir"]}
                                 if task.get("storage_options") else {}))
    out["open_s"] = time.perf_counter() - t  # lists no file: queries scan what they touch
    emit(out)
    run = task.get("run", RUN)
    if task.get("runs", True):
        t = time.perf_counter()
        out["runs_rows"] = len(a.runs())
        out["runs_s"] = time.perf_counter() - t
        emit(out)
    t = time.perf_counter()
    c = a.curve(run, "loss", buckets=2000)
    out["curve_cold_s"] = time.perf_counter() - t
    out["curve_buckets"] = len(c)
    emit(out)
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        a.curve(run, "loss", buckets=2000)
        warm.append(time.perf_counter() - t)
    out["curve_warm_s"] = median(warm)
    emit(out)
    if task.get("straggler", True):
        t = time.perf_counter()
        per_rank = a.sql(STRAGGLER_SQL).to_pylist()
        out["straggler_s"] = time.perf_counter() - t
        out["rank_rows"] = len(per_rank)
        out["points"] = sum(r["n"] for r in per_rank)
        out["max_rank_points"] = max((r["n"] for r in per_rank), default=0)
        slowest = max(per_rank, key=lambda r: r["median_step_time_s"], default=None)
        out["slowest_rank"] = None if slowest is None else slowest["rank"]
    out["files"] = a.scanned_files  # the whole archive once runs() or SQL ran, else the run's files
    out["footers_read"] = a._catalog.footers_read  # bench-only peek: which cost the scan paid
    out["small_files"] = a._small.files_loaded
    out["rss"] = self_peak_rss()
    return out


def journey_visit(root: str, timeout: float, profile: str) -> dict[str, Any]:
    """First visit of the journey page: a new `flightlog ui` server and a new browser profile."""
    proc = driver = None
    try:
        proc = _start_server(Path(root))
        wait_http(f"http://127.0.0.1:{proc.port}/_stcore/health", timeout=60)  # type: ignore[attr-defined]
        driver = make_driver(profile)
        s = time_to_interactive(driver, f"http://127.0.0.1:{proc.port}/journey?run={RUN}",  # type: ignore[attr-defined]
                                charts=4, timeout=timeout)
        return {"journey_s": s, "server_rss": _peak_rss(proc.pid)}
    except Exception as exc:  # noqa: BLE001 - a failed or slow visit is a miss in the report, not a crash
        return {"journey_error": " ".join(str(exc).split())[:160], "server_rss": proc and _peak_rss(proc.pid)}
    finally:
        if driver is not None:
            driver.quit()
        if proc is not None:
            stop_server(proc)


@dataclass
class Point:
    label: str
    interval: int
    files: dict[str, int]
    data: dict[str, Any]
    timed_out: bool
    error: str
    peak_rss: int
    wall_s: float


def reader_point(label: str, interval: int, root: str, sizes: Sizes, work: Path) -> Point:
    files = count_files(root)
    r = run_child(MODULE, {"task": "reader", "root": root}, timeout_s=sizes.timeout_s)
    data = dict(r.data)
    if sizes.browser and (sizes.journey_during or label == "end"):
        data.update(journey_visit(root, sizes.journey_timeout_s, str(work / f"profile-{label}")))
    return Point(label, interval, files, data, r.timed_out, "" if r.ok else r.error, r.peak_rss, r.wall_s)


# ---- (a) + (b): the parent --------------------------------------------------------------------

@dataclass
class LiveResult:
    samples: list[dict[str, Any]] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)
    progress: list[list[dict[str, Any]]] = field(default_factory=list)
    writers: list[dict[str, Any]] = field(default_factory=list)
    writer_rss: list[int] = field(default_factory=list)
    sidecar: dict[str, Any] = field(default_factory=dict)
    sidecar_rss: int = 0
    sidecar_start_s: float | None = None
    points: list[Point] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def live(root: str, sizes: Sizes, work: Path) -> LiveResult:
    ensure_root_file(*open_fs(root))
    res = LiveResult()
    gate = os.path.join(str(work), "compactor-on")
    per = math.ceil(sizes.ranks / sizes.procs)
    baseline = max(2, sizes.intervals // 10) + 1  # interval 0 (first rows of every table) is left out
    # the reader points: every writer waits at the start of these intervals until the point is measured
    targets = [t for k, f in enumerate((0.25, 0.5, 0.75), start=1)
               if (t := max(baseline + k, round(sizes.intervals * f))) < sizes.intervals]
    t0 = time.perf_counter()
    writers = [Child({"task": "writers", "root": root, "lo": lo, "hi": min(lo + per, sizes.ranks),
                      "world": sizes.ranks, "intervals": sizes.intervals, "gate": gate, "stops": targets,
                      "sync": str(work),
                      "steps_per_interval": sizes.steps_per_interval, "min_interval_s": sizes.min_interval_s})
               for lo in range(0, sizes.ranks, per)]
    done = threading.Event()

    def progress() -> int:
        return min((len(w.lines) for w in writers), default=0)

    def sample() -> None:
        while True:
            with contextlib.suppress(OSError):  # a file removed while listed: the next sample sees the rest
                res.samples.append({"t": time.perf_counter() - t0, "interval": progress(), **count_files(root)})
            if done.wait(5.0 if sizes.ranks >= 256 else 1.0):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    points_thread_out: list[Point] = []
    los = list(range(0, sizes.ranks, per))

    def points() -> None:
        for n, target in enumerate(targets, start=1):
            try:
                while any(w.running() for w in writers) and not all(
                        os.path.exists(work / f"held-{target}-{lo}") for lo in los):
                    time.sleep(0.1)
                if any(w.running() for w in writers):
                    points_thread_out.append(reader_point(f"during {n}", target, root, sizes, work))
            finally:
                (work / f"go-{target}").touch()  # whatever happened, the writers go on

    pt = threading.Thread(target=points, daemon=True)
    pt.start()
    sidecar: Child | None = None
    while any(w.running() for w in writers):
        if sidecar is None and progress() >= baseline:
            sidecar = Child({"task": "sidecar", "root": root, "pass_interval_s": sizes.pass_interval_s,
                             "grace_s": sizes.grace_s})
            res.sidecar_start_s = time.perf_counter() - t0
            Path(gate).touch()
        time.sleep(0.2)
    for w in writers:
        if not w.reap(60):
            res.errors.append(f"writer process failed: {w.stderr.strip().splitlines()[-1:]!r}")
        res.progress.append(w.lines)
        res.writers.append(w.result)
        res.writer_rss.append(w.peak_rss)
    if sidecar is None:  # too few intervals to start it during the run
        sidecar = Child({"task": "sidecar", "root": root, "pass_interval_s": sizes.pass_interval_s,
                         "grace_s": sizes.grace_s})
        res.sidecar_start_s = time.perf_counter() - t0
    # the writers closed: the sidecar's next full passes merge their last parts (closed groups)
    seen = len(sidecar.lines)
    deadline = time.monotonic() + max(120.0, 20 * sizes.pass_interval_s)
    while len(sidecar.lines) < seen + 2 and time.monotonic() < deadline and sidecar.running():
        time.sleep(0.2)
    res.wall_s = time.perf_counter() - t0
    pt.join()
    done.set()
    sampler.join()
    res.samples.append({"t": time.perf_counter() - t0, "interval": sizes.intervals, **count_files(root)})
    sidecar.proc.send_signal(signal.SIGTERM)
    if not sidecar.reap(120):
        res.errors.append(f"sidecar failed: {sidecar.stderr.strip().splitlines()[-1:]!r}")
    res.passes, res.sidecar, res.sidecar_rss = sidecar.lines, sidecar.result, sidecar.peak_rss
    res.points = points_thread_out + [reader_point("end", sizes.intervals, root, sizes, work)]
    return res


def _window(progress: list[list[dict[str, Any]]], on: bool, ranks_per: list[int], spi: int) -> dict[str, float]:
    wall, cpu, hot, rank_steps, n = [], 0.0, 0.0, 0, 0
    for lines, ranks in zip(progress, ranks_per, strict=True):
        for p in lines:
            if p["i"] == 0 or p["on"] != on:
                continue
            wall.append(p["wall"])
            cpu += p["cpu"]
            hot += p["hot"]
            rank_steps += ranks * spi
            n += 1
    if not n:
        return {"intervals": 0}
    return {"intervals": n, "wall_s": median(wall), "hot_us": 1e6 * hot / rank_steps, "cpu_us": 1e6 * cpu / rank_steps}


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _cell(p: Point, key: str) -> str:
    v = p.data.get(key)
    if v is not None:
        return fmt_s(v) + ("" if v <= BUDGET[key] else " ✗")
    if key == "journey_s":
        return f"failed: {p.data['journey_error']}" if "journey_error" in p.data else "—"
    return f"> {fmt_s(p.wall_s)} (timeout)" if p.timed_out else ("failed" if p.error else "—")


def report_live(res: LiveResult, sizes: Sizes) -> tuple[str, list[list[str]], dict[str, Any]]:
    ranks_per = [min(math.ceil(sizes.ranks / sizes.procs), sizes.ranks - lo)
                 for lo in range(0, sizes.ranks, math.ceil(sizes.ranks / sizes.procs))]
    offered = sizes.ranks * sizes.intervals
    out = [f"### (a) Live: {sizes.ranks:,} ranks × {sizes.intervals} segment intervals ({offered:,} metric "
           f"segments offered, {sizes.ranks * sizes.intervals * sizes.steps_per_interval * len(METRICS):,} points)\n",
           f"Writers: {len(ranks_per)} processes of real `telemetry.Writer`s ({sizes.steps_per_interval} steps × "
           f"{len(METRICS)} metrics per interval, a flush per interval, `segment_interval_s=0`, an interval at most "
           f"every {sizes.min_interval_s:g} s where the default segment interval is 60 s, niced: they stand for "
           "other hosts); compactor: the "
           f"sidecar `flightlog compact --follow` (`live_compactor.follow`, a pass every {sizes.pass_interval_s:g} s, "
           f"replaced files deleted {sizes.grace_s:g} s after their swap), started at {fmt_s(res.sidecar_start_s)}. "
           f"Writers done after {fmt_s(res.wall_s)}.\n"]
    if res.errors:
        out.append("Errors: " + "; ".join(res.errors) + "\n")
    # files over time: about 12 rows
    picks = sorted({round(i * (len(res.samples) - 1) / 11) for i in range(12)}) if res.samples else []
    rows = [[fmt_s(s["t"]), s["interval"], f"{s['total']:,}", f"{s['listed']:,}", f"{s['live']:,}", f"{s['parts']:,}"]
            for s in (res.samples[i] for i in picks)]
    out += ["Files over time (sampled by the bench while it ran):\n",
            md_table(["elapsed", "interval", "files in archive", "metric files listed", "metric files read (live)",
                      "raw parts among them"], rows), ""]
    lags = [p["lag_s"] for p in res.passes if p["parts"]]
    secs = [p["seconds"] for p in res.passes]
    settled = 5 * sizes.pass_interval_s  # the first passes catch up with what the writers left before it started
    after = [s for s in res.samples if res.sidecar_start_s is not None and s["t"] > res.sidecar_start_s + settled]
    max_live = max((s["live"] for s in after), default=None)
    problems = sorted({q for p in res.passes for q in p["problems"]})[:3]
    out += [md_table(["compaction", "value"], [
        ["passes", f"{len(res.passes)} (median {fmt_s(median(secs))}, longest {fmt_s(max(secs, default=None))})"],
        ["parts merged / compact files merged into a higher tier",
         f"{sum(p['parts'] for p in res.passes):,} / {sum(p['tiers'] for p in res.passes):,}"],
        ["replaced files deleted", f"{sum(p['removed'] for p in res.passes):,}"],
        ["lag: age of the oldest part a pass merged (median / max)",
         f"{fmt_s(median(lags))} / {fmt_s(max(lags, default=None))}"],
        [f"metric files a reader reads, most seen from {settled:g} s after the compactor started",
         "—" if max_live is None else f"{max_live:,} ({max_live / sizes.ranks:.2f} per rank)"],
        ["problems reported", "; ".join(problems) or "none"],
    ]), ""]
    off, on = (_window(res.progress, flag, ranks_per, sizes.steps_per_interval) for flag in (False, True))
    cost_rows = []
    for label, w in (("no compactor", off), ("sidecar compacting", on)):
        if w["intervals"]:
            cost_rows.append([label, w["intervals"], fmt_s(w["wall_s"]), f"{w['hot_us']:.2f} µs",
                              f"{w['cpu_us']:.1f} µs", fmt_s(w["cpu_us"] * sizes.steps_per_interval / 1e6)])
    out += ["Writer host cost (per simulated rank; hot path = the `metrics()` calls; CPU = the writer processes, "
            "flush threads included; same run, interval 0 and the reader points left out). With a segment every "
            f"{sizes.steps_per_interval} steps the CPU is mostly the segment's (staging, Parquet, heartbeat): per "
            "interval is the figure that carries over to a 60 s interval.\n",
            md_table(["window", "process-intervals", "wall per interval (median)", "hot path per step",
                      "writer CPU per step", "writer CPU per interval"], cost_rows), ""]
    peak_w = max(res.writer_rss, default=0)
    out += [md_table(["peak memory", "RSS"], [
        [f"writer process ({max(ranks_per)} ranks)", f"{fmt_bytes(peak_w)} ({fmt_bytes(peak_w / max(ranks_per))} "
         "per rank)"],
        ["sidecar compactor", fmt_bytes(res.sidecar_rss)],
        ["reader process (largest)", fmt_bytes(max((p.peak_rss for p in res.points), default=0))],
    ] + ([["app server (largest, journey visit)",
           fmt_bytes(max((p.data.get("server_rss") or 0 for p in res.points), default=0))]] if sizes.browser else [])),
        ""]
    # (b)
    expect_final = sizes.ranks * sizes.intervals * sizes.steps_per_interval
    prow = []
    for p in res.points:
        pts, want = p.data.get("points"), sizes.ranks * p.interval * sizes.steps_per_interval
        check = "—" if pts is None else (f"{pts:,} = all" if pts == want else f"**{pts:,} of {want:,}: wrong**")
        prow.append([f"{p.label} (interval {p.interval})", f"{p.files['listed']:,} / {p.files['live']:,}",
                     _cell(p, "open_s"), _cell(p, "runs_s"), _cell(p, "curve_cold_s"), _cell(p, "curve_warm_s"),
                     _cell(p, "straggler_s"), _cell(p, "journey_s") if sizes.browser else "not run", check,
                     f"{_count(p.data.get('footers_read'))} / {_count(p.data.get('small_files'))}",
                     fmt_bytes(p.peak_rss)])
    out += [f"### (b) Reader during (a) and at the end (each a new process; ✗: over budget; timeout "
            f"{sizes.timeout_s:g} s per process, {sizes.journey_timeout_s:g} s per page visit)\n",
            md_table(["point", "metric files listed / live", "open", "runs()", "curve cold", "curve warm",
                      "straggler SQL", "journey page first visit", "step_time points read",
                      "footers read / small files loaded", "peak RSS"], prow),
            "\nThe writers wait (alive, their last interval flushed) while a point is measured; the compactor "
            "keeps running. step_time points read: the straggler SQL's per-rank counts summed; every rank logs one "
            "per step, so every point must read exactly what was written by then (none missed, none twice). "
            "Footers read: files the reader found in no run index (the rest came from the indexes the compactor "
            "keeps); small files loaded: raw segments read once into memory (telemetry/read/small_files.py).\n"]
    budget = []
    for key, what in (("open_s", "`Archive(url)`"), ("runs_s", "`runs()`"), ("curve_cold_s", "curve cold"),
                      ("curve_warm_s", "curve warm"), ("straggler_s", "per-rank straggler SQL"),
                      ("journey_s", "journey page first visit")):
        if key == "journey_s" and not sizes.browser:
            continue
        vals = [p.data.get(key) for p in res.points if key != "journey_s" or sizes.journey_during or p.label == "end"]
        worst = max((v for v in vals if v is not None), default=None)
        missing = sum(v is None for v in vals)
        ok = missing == 0 and worst is not None and worst <= BUDGET[key]
        shown = fmt_s(worst) + (f" ({missing} of {len(vals)} not measured)" if missing else "")
        budget.append([f"{what} ≤ {fmt_s(BUDGET[key])} at every point of a {sizes.ranks:,}-rank live run "
                       "(worst)", shown, verdict(ok)])
    data = {"samples": res.samples, "passes": len(res.passes), "lag_max_s": max(lags, default=None),
            "max_live_files": max_live, "cost": {"off": off, "on": on}, "writers": res.writers,
            "points": [asdict(p) for p in res.points], "errors": res.errors, "expect_points": expect_final}
    summary("growth (a)", f"live {sizes.ranks:,} ranks × {sizes.intervals} intervals: metric files read, "
            "most after the compactor started", "—" if max_live is None else f"{max_live:,}",
            f"{offered:,} segments offered", None, peak_w)
    return "\n".join(out), budget, data


# ---- (c) remote --------------------------------------------------------------------------------

class CountingProxy:
    """A TCP proxy on loopback in front of the S3 server: counts the bytes the server sends to clients."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.down = 0
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the proxy is done
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(conn, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                if count:
                    with self._lock:
                        self.down += len(data)
        except OSError:  # either side hung up: the connection is over
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):  # already closed by the other pump
                    s.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        with self._lock:
            self.down = self.connections = 0

    def close(self) -> None:
        self.sock.close()


def flightlog_index(root: str, timeout: float) -> tuple[float, str]:
    """`flightlog index ROOT` as a user runs it before sharing an archive; (seconds, error or "")."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "app.cli", "index", "--quiet", root], cwd=ROOT, timeout=timeout,
                           capture_output=True, text=True)
        err = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:160]
    except subprocess.TimeoutExpired:
        err = f"timed out after {timeout:.0f} s"
    return time.perf_counter() - t, err


def upload(root: str, endpoint: str) -> tuple[int, float]:
    import boto3  # lazy: boto3 is heavy and only the remote part needs it

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: s3.upload_file(str(p), BUCKET, f"archive/{p.relative_to(root).as_posix()}"), files))
    return len(files), time.perf_counter() - t


def remote(root: str, sizes: Sizes, work: Path) -> tuple[str, list[list[str]], dict[str, Any]]:
    from moto.server import ThreadedMotoServer  # lazy: moto is heavy and only the remote part needs it

    os.environ.update(S3_ENV)
    index_s, index_err = flightlog_index(root, 300)
    moto_port = _free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    proxy = CountingProxy(moto_port)
    try:
        n_files, upload_s = upload(root, f"http://127.0.0.1:{moto_port}")
        run = f"run-{sizes.remote_runs // 2:04d}"
        run_bytes = sum(p.stat().st_size for p in Path(root).glob(f"*/run_id={run}/**/*") if p.is_file())
        catalog = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and "run_id=" not in str(p))
        total = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
        opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{proxy.port}"},
                "skip_instance_cache": True}
        proxy.reset()
        r = run_child(MODULE, {"task": "reader", "root": f"s3://{BUCKET}/archive", "storage_options": opts,
                               "cache_dir": str(work / "remote-cache"), "run": run, "runs": False, "straggler": False},
                      timeout_s=sizes.timeout_s * 2, env=S3_ENV)
        time.sleep(0.2)  # the last response's bytes pass the proxy
        fetched, connections = proxy.down, proxy.connections
    finally:
        proxy.close()
        server.stop()
    d = r.data
    drawn = (d["open_s"] + d["curve_cold_s"]) if "curve_cold_s" in d else None
    allowed = 2 * run_bytes + catalog
    t_cell = fmt_s(drawn) if drawn is not None else (f"> {fmt_s(r.wall_s)} (timeout)" if r.timed_out else
                                                     f"failed: {r.error}")
    text = "\n".join([
        f"### (c) Remote: {sizes.remote_runs:,} runs × {sizes.remote_steps:,} steps on a moto S3 server\n",
        f"One compact-layout file per run (bench_cross_run's build), `flightlog index` ({fmt_s(index_s)}"
        f"{', ' + index_err if index_err else ''}), {n_files:,} objects ({fmt_bytes(total)}) uploaded in "
        f"{fmt_s(upload_s)}. A new process opens `s3://…` with an empty cache and draws `{run}`'s 2,000-bucket "
        "loss curve; bytes counted at a TCP proxy in front of the server (responses, headers included).\n",
        md_table(["measurement", "value"], [
            ["open", fmt_s(d.get("open_s"))], ["first curve", fmt_s(d.get("curve_cold_s"))],
            ["open + curve", t_cell], ["curve warm", fmt_s(d.get("curve_warm_s"))],
            ["bytes fetched (server → reader)", f"{fmt_bytes(fetched)} over {connections} connections"],
            ["that run's bytes / catalog (objects outside run partitions)",
             f"{fmt_bytes(run_bytes)} / {fmt_bytes(catalog)}"],
            ["fetched ÷ (run + catalog)", f"{fetched / max(1, run_bytes + catalog):.1f}×"],
            ["reader peak RSS", fmt_bytes(r.peak_rss)]]),
    ])
    budget = [[f"remote open + one run's curve ≤ 2 s ({sizes.remote_runs:,} runs on S3)", t_cell,
               verdict(drawn is not None and drawn <= BUDGET["remote_s"])],
              [f"bytes fetched ≤ 2 × the run's bytes + the catalog ({fmt_bytes(allowed)})", fmt_bytes(fetched),
               verdict(drawn is not None and fetched <= allowed)]]
    summary("growth (c)", f"remote {sizes.remote_runs:,}-run S3 archive: open + one curve; bytes fetched",
            f"{t_cell}; {fmt_bytes(fetched)}", f"≤ 2 s; ≤ {fmt_bytes(allowed)}", None, r.peak_rss)
    return text, budget, {"seconds": drawn, "fetched": fetched, "run_bytes": run_bytes, "catalog": catalog,
                          "timed_out": r.timed_out, "data": d}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- (d) growth against files and runs ---------------------------------------------------------

def _raw_segments(task: tuple[str, list[int], int, int]) -> int:
    """Raw segments of ranks `ranks`, `intervals` each, as a writer leaves them (loss and step_time_s)."""
    root, ranks, intervals, spi = task
    sch = schema("metrics")
    n = 0
    for rank in ranks:
        folder = os.path.dirname(os.path.join(root, segment_path("metrics", RUN, 0, rank, 1)))
        os.makedirs(folder, exist_ok=True)
        for seq in range(1, intervals + 1):
            steps = np.arange((seq - 1) * spi, seq * spi, dtype=np.int64)
            loss = 2.0 + 8.0 / (1.0 + steps / 200.0)
            table = pa.table({
                "run_id": pa.array([RUN] * 2 * spi), "attempt": pa.array(np.zeros(2 * spi, np.int32)),
                "rank": pa.array(np.full(2 * spi, rank, np.int32)), "step": pa.array(np.concatenate([steps, steps])),
                "name": pa.array(["loss"] * spi + ["step_time_s"] * spi),
                "value": pa.array(np.concatenate([loss, np.full(spi, 0.5)])),
                "wall_time": pa.array(T0_US + np.concatenate([steps, steps]) * 500_000).cast(
                    pa.timestamp("us", tz="UTC")),
            }, schema=sch)
            with open(os.path.join(root, segment_path("metrics", RUN, 0, rank, seq)), "wb") as fh:
                fh.write(memoryview(segment_bytes(table)))
            n += 1
    return n


def build_files(root: str, files: int, intervals: int = 100) -> float:
    ensure_root_file(*open_fs(root))
    ranks = max(1, files // intervals)
    t = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_raw_segments, [(root, list(range(w, ranks, 2)), intervals, 10) for w in range(2)]))
    return time.perf_counter() - t


def slope(xs: list[float], ys: list[float | None]) -> str:
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
    if len(pts) < 2:
        return "—"
    k = float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])
    return f"{k:.2f}" + ("" if len(pts) == len(xs) else f" (over the {len(pts)} points measured)")


def growth_table(kind: str, xs: list[int], roots: list[str], timeout: float,
                 run_of: Any) -> tuple[str, list[list[str]], dict[str, Any]]:
    rows, opens, curves = [], [], []
    for x, root in zip(xs, roots, strict=True):
        r = run_child(MODULE, {"task": "reader", "root": root, "run": run_of(x), "runs": False,
                               "straggler": False}, timeout_s=timeout)
        d = r.data
        opens.append(d.get("open_s"))
        curves.append(d.get("curve_cold_s"))
        late = f"> {fmt_s(r.wall_s)} (timeout)" if r.timed_out else f"failed: {r.error}"
        rows.append([f"{x:,}", f"{d['files']:,}" if "files" in d else "—",
                     fmt_s(d["open_s"]) if "open_s" in d else late,
                     fmt_s(d["curve_cold_s"]) if "curve_cold_s" in d else late, fmt_s(d.get("curve_warm_s")),
                     fmt_bytes(r.peak_rss)])
    text = "\n".join([md_table([kind, "files the reader saw", "open", "curve cold", "curve warm", "peak RSS"], rows),
                      f"\nslope (log-log fit, time ∝ {kind}^k): open k = {slope(xs, opens)}, curve cold k = "
                      f"{slope(xs, curves)}. Flat is 0; linear is 1.\n"])
    ok = all(v is not None for v in opens + curves)
    budget = [[f"open ≤ 1 s and curve cold ≤ 1 s at every size ({kind}: {', '.join(f'{x:,}' for x in xs)})",
               f"{fmt_s(max((v for v in opens if v is not None), default=None))} / "
               f"{fmt_s(max((v for v in curves if v is not None), default=None))} (worst)",
               verdict(ok and max(opens) <= 1.0 and max(curves) <= 1.0)]]  # type: ignore[type-var]
    return text, budget, {"x": xs, "open_s": opens, "curve_s": curves}


def live_pass(root: str, ranks: int) -> float:
    """One live-compactor pass over a run of raw segments whose `ranks` writers are all alive; seconds."""
    fs, fs_root = open_fs(root)
    t = time.perf_counter()
    compact_live_run(fs, fs_root, RUN, live={(RUN, 0, r) for r in range(ranks)},
                     policy=LivePolicy(settle_s=0.0, grace_s=0.0), rebuild_lod_now=True)
    return time.perf_counter() - t


def growth(work: Path, sizes: Sizes, runs_root: str | None) -> tuple[str, list[list[str]], dict[str, Any]]:
    out, budget, data = ["### (d) Growth: open and curve time against files and against runs\n"], [], {}
    roots = []
    for n in sizes.files:
        root = str(work / f"files-{n}")
        took = build_files(root, n)
        roots.append(root)
        out.append(f"- {n:,} raw segments ({max(1, n // 100):,} ranks × 100 intervals) written in {fmt_s(took)}")
    text, b, data["files"] = growth_table("files", sizes.files, roots, sizes.timeout_s, lambda _: RUN)
    out += ["", "Against files: one run of raw segments as writers leave them (no compaction), a new process each.\n",
            text]
    budget += b
    passes = []
    for n, root in zip(sizes.files, roots, strict=True):
        passes.append(live_pass(root, max(1, n // 100)))
    text, b, data["files_compacted"] = growth_table("files", sizes.files, roots, sizes.timeout_s, lambda _: RUN)
    out += ["The same runs after one pass of the live compactor with every rank's writer still alive "
            "(`compact_live_run`: each rank's newest part stays, the rest is merged; LOD built), which is what a "
            "reader meets while a run with the compactor on is written: files read ≈ ranks + a few compact files. "
            "Pass: " + "; ".join(f"{n:,} files → {fmt_s(s)}" for n, s in zip(sizes.files, passes, strict=True))
            + ".\n", text]
    budget += [[row[0].replace("at every size", "after live compaction, at every size"), *row[1:]] for row in b]
    roots = []
    for n in sizes.runs:
        root = runs_root if runs_root and n == sizes.remote_runs else str(work / f"runs-{n}")
        if root != runs_root:
            build_runs(root, n, sizes.remote_steps)
            flightlog_index(root, 300)  # as (c)'s archive: what a user does before sharing it
        roots.append(root)
    text, b, data["runs"] = growth_table("runs", sizes.runs, roots, sizes.timeout_s, lambda n: f"run-{n // 2:04d}")
    out += [f"Against runs: {sizes.remote_steps:,} steps each, one compact-layout file per run (local), one run's "
            "curve.\n", text]
    budget += b
    return "\n".join(out), budget, data


# ---- main ----------------------------------------------------------------------------------------

def default_dir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 8 << 30:
        return Path(tempfile.mkdtemp(prefix="flightlog-bench-growth-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="flightlog-bench-growth-"))


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    task = child_task(argv)
    if task is not None:
        emit({"writers": child_writers, "sidecar": child_sidecar, "reader": child_reader}[task["task"]](task))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    ap.add_argument("--only", default="a,c,d", help="parts to run: a (live, with its readers b), c, d")
    ap.add_argument("--ranks", type=int)
    ap.add_argument("--intervals", type=int)
    ap.add_argument("--steps-per-interval", type=int)
    ap.add_argument("--procs", type=int)
    ap.add_argument("--min-interval-s", type=float, help="writers' least seconds per interval (3; 0: full speed)")
    ap.add_argument("--remote-runs", type=int)
    ap.add_argument("--remote-steps", type=int)
    ap.add_argument("--files", help="comma-separated file counts for (d)")
    ap.add_argument("--runs", help="comma-separated run counts for (d)")
    ap.add_argument("--timeout", type=float, help="seconds per reader process")
    ap.add_argument("--no-browser", action="store_true", help="skip the journey page visits")
    ap.add_argument("--dir", help="work folder (default: a temporary one, in /dev/shm when it has room)")
    ap.add_argument("--keep", action="store_true", help="keep the archives (only with --dir)")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    sizes = Sizes(**(QUICK if args.quick else {}))
    for name in ("ranks", "intervals", "steps_per_interval", "procs", "remote_runs", "remote_steps", "min_interval_s"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    sizes.procs = max(1, min(sizes.procs, sizes.ranks))
    if args.files:
        sizes.files = [int(float(x)) for x in args.files.split(",")]
    if args.runs:
        sizes.runs = [int(float(x)) for x in args.runs.split(",")]
    if args.timeout:
        sizes.timeout_s = args.timeout
    sizes.browser = not args.no_browser and os.path.exists("/usr/bin/chromium")
    only = {p.strip() for p in args.only.split(",")}
    work = Path(args.dir) if args.dir else default_dir()
    work.mkdir(parents=True, exist_ok=True)
    print(f"flightlog growth{' (--quick)' if args.quick else ''}: commit {commit()}, {machine_note()}, archives in "
          f"{'tmpfs' if str(work).startswith('/dev/shm') else 'the temp folder'}\n")
    t = time.perf_counter()
    budget: list[list[str]] = []
    data: dict[str, Any] = {"sizes": asdict(sizes)}
    try:
        if "a" in only:
            res = live(str(work / "live"), sizes, work)
            text, b, data["live"] = report_live(res, sizes)
            print(text + "\n", flush=True)
            budget += b
        runs_root = None
        if "c" in only:
            runs_root = str(work / f"runs-{sizes.remote_runs}")
            build_s, _ = build_runs(runs_root, sizes.remote_runs, sizes.remote_steps)
            print(f"({sizes.remote_runs:,} runs built in {fmt_s(build_s)})\n")
            text, b, data["remote"] = remote(runs_root, sizes, work)
            print(text + "\n", flush=True)
            budget += b
        if "d" in only:
            text, b, data["growth"] = growth(work, sizes, runs_root)
            print(text + "\n", flush=True)
            budget += b
        if budget:
            print(md_table(["budget", "measured", "verdict"], budget) + "\n", flush=True)
    finally:
        if not (args.dir and args.keep):
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
    print(f"({time.perf_counter() - t:.0f} s; load average at the end {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
