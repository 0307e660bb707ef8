"""Time until the Journey page of a 1M-step, 8-rank run is interactive in headless Chromium.

Builds the run in a temporary archive (metrics written straight as Parquet segments in the
archive layout, 5 metrics per rank per step plus tokens_seen on rank 0; runs/attempts/ranks
rows and a few incidents through the real Writer), compacts it the way `flightlog index`
does (compact files + LOD tables), starts `flightlog ui` (app.ui.server.serve) on a loopback
port and measures, in headless Chromium, the time from navigation to "interactive": the page
title shown, every journey chart drawn (Vega canvas), and no script run in progress.

Usage: python -m bench.bench_journey_page [--steps 1000000] [--ranks 8] [--no-compact] [--keep DIR]
Budget (ARCHITECTURE.md): interactive <= 3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.ui.server import stop as stop_server
from data_schema import schema
from data_schema.layout import segment_path

RUN = "bench-1m"
METRICS = ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T0_US = 1_767_225_600_000_000


# -- the archive -------------------------------------------------------------------------------
def metric_values(name: str, steps: np.ndarray, rank: int, rng: np.random.Generator) -> np.ndarray:
    n = len(steps)
    if name == "loss":
        v = 2.0 + 8.0 / (1.0 + steps / 20_000.0) + 0.05 * rng.standard_normal(n) + 0.001 * rank
        v[steps == 777_777] = 60.0  # one spike in a million steps
        v[steps % 250_000 == 12_345] = np.nan  # periodic NaN losses, as in LLM360's Amber
        return v
    if name == "grad_norm":
        v = 1.0 + 0.2 * np.abs(rng.standard_normal(n))
        v[steps == 500_001] = np.inf
        return v
    if name == "lr":
        return 3e-4 * np.minimum(1.0, (steps + 1) / 2000.0) * (0.5 + 0.5 * np.cos(np.pi * steps / steps[-1]))
    if name == "tokens_per_s":
        return 4.0e5 * (1.0 - 0.02 * (rank == 5)) + 2e3 * rng.standard_normal(n)
    if name == "step_time_s":
        return 0.50 * (1.15 if rank == 5 else 1.0) + 0.01 * np.abs(rng.standard_normal(n))
    if name == "tokens_seen":
        return (steps + 1).astype("float64") * 1_048_576
    raise ValueError(name)


def write_rank_segment(root: Path, rank: int, n_steps: int) -> int:
    """One segment of a rank: every metric over every step, sorted by (name, step)."""
    rng = np.random.default_rng(rank)
    steps = np.arange(n_steps, dtype=np.int64)
    names = METRICS + (("tokens_seen",) if rank == 0 else ())
    path = root / segment_path("metrics", RUN, 0, rank, 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    sch = schema("metrics")
    rows = 0
    with pq.ParquetWriter(path, sch, compression="zstd", use_dictionary=["run_id", "name"],
                          column_encoding={"step": "DELTA_BINARY_PACKED", "value": "BYTE_STREAM_SPLIT",
                                           "wall_time": "DELTA_BINARY_PACKED"}) as writer:
        for name in sorted(names):
            wall = T0_US + steps * 500_000 + rank * 1_000
            table = pa.table({
                "run_id": pa.array(np.full(n_steps, RUN, dtype=object), pa.string()),
                "attempt": pa.array(np.zeros(n_steps, dtype=np.int32)),
                "rank": pa.array(np.full(n_steps, rank, dtype=np.int32)),
                "step": pa.array(steps),
                "name": pa.array(np.full(n_steps, name, dtype=object), pa.string()),
                "value": pa.array(metric_values(name, steps, rank, rng)),
                "wall_time": pa.array(wall, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            }, schema=sch)
            writer.write_table(table, row_group_size=1_000_000)
            rows += n_steps
    return rows


def build_archive(root: Path, n_steps: int, n_ranks: int) -> int:
    from telemetry import Writer

    writers = [Writer(str(root), RUN, rank=r, attempt=0, world_size=n_ranks, project="bench", dp_size=n_ranks)
               for r in range(n_ranks)]
    for r, w in enumerate(writers):
        w.rank_info(local_rank=r, host="node-0", gpu_uuid=f"GPU-{r}", dp_rank=r)
    w0 = writers[0]
    for step in range(12_345, n_steps, 250_000):
        w0.event("nan", step=step, severity="error", message="loss is NaN", data_chunk=step // 10_000)
    w0.event("loss_spike", step=777_777, severity="warning", message="loss 60", data_chunk=77)
    for step in range(0, n_steps, 100_000):
        w0.event("checkpoint_saved", step=step, message=f"step {step}")
    rows = sum(write_rank_segment(root, r, n_steps) for r in range(n_ranks))
    for w in reversed(writers):
        w.close()
    return rows


# -- the app and the browser ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def make_driver(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1440,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def time_to_interactive(driver, url: str, *, charts: int, timeout: float = 120.0) -> float:
    """Seconds from navigation until the title, `charts` drawn Vega charts and no running script."""
    from selenium.webdriver.common.by import By

    driver.get("about:blank")
    t0 = time.perf_counter()
    driver.get(url)
    first_quiet = None
    while time.perf_counter() - t0 < timeout:
        ready = (driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h1')
                 and not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
                 and len(driver.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg.marks")) >= charts)
        if ready:
            first_quiet = first_quiet or time.perf_counter()
            if time.perf_counter() - first_quiet >= 0.3:  # still idle 0.3 s later: the run is over
                if driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'):
                    raise RuntimeError("the page shows an exception")
                return first_quiet - t0
        else:
            first_quiet = None
        time.sleep(0.05)
    raise TimeoutError(f"{url} not interactive within {timeout:.0f} s")


def _peak_rss(pid: int) -> int | None:
    """Peak RSS (VmHWM) of a live process, bytes; None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _start_server(root: Path):
    """`flightlog ui` (app.ui.server.serve) on a free loopback port; the Popen gets a `port` attribute."""
    from app.ui.server import serve

    port = free_port()
    # the server inherits stdout: point it at /dev/null so its banner stays out of the report
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        proc = serve(str(root), port=port, block=False, address="127.0.0.1")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    proc.port = port  # type: ignore[attr-defined]
    return proc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="revisits and zooms to measure")
    p.add_argument("--cold", type=int, default=3, help="first visits to measure, each on a new server process")
    p.add_argument("--no-compact", action="store_true", help="measure on raw segments (no compaction, no LOD)")
    p.add_argument("--keep", help="build (or reuse) the archive in this folder and keep it")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="flightlog-bench-journey-"))
    root = Path(args.keep) if args.keep else tmp / "archive"
    proc = driver = None
    server_peak: int | None = None
    try:
        t = time.perf_counter()
        if not (root / "metrics").exists():
            rows = build_archive(root, args.steps, args.ranks)
        else:
            rows = args.steps * len(METRICS) * args.ranks + args.steps
        build_s = time.perf_counter() - t
        compact_s = None
        if not args.no_compact:
            from telemetry.maintain.compaction import compact

            t = time.perf_counter()
            report = compact(str(root), RUN, grace_s=0.0)
            compact_s = time.perf_counter() - t
            for problem in report.problems:
                print(f"compaction problem: {problem}")
        disk = sum(f.stat().st_size for f in root.rglob("*.parquet"))

        base = url = ""
        colds: list[float] = []
        for i in range(max(1, args.cold)):  # each first visit: a new server process and a new browser profile
            if proc is not None:
                stop_server(proc)
            proc = _start_server(root)
            base = f"http://127.0.0.1:{proc.port}"  # type: ignore[attr-defined]
            wait_http(base + "/_stcore/health")
            url = f"{base}/journey?run={RUN}"
            if i < args.cold - 1:
                driver = make_driver(str(tmp / f"profile-cold-{i}"))
                colds.append(time_to_interactive(driver, url, charts=4))
                driver.quit()
                driver = None
        driver = make_driver(str(tmp / "profile"))
        colds.append(time_to_interactive(driver, url, charts=4))  # first visit: new server, nothing cached
        cold = statistics.median(colds)
        warm = [time_to_interactive(driver, url, charts=4) for _ in range(args.repeat)]
        zoom = [time_to_interactive(driver, f"{url}&lo={lo}&hi={lo + 50_000}", charts=4)
                for lo in (100_000, 400_000, 700_000)[: max(1, args.repeat)]]
        (Path("test-artifacts") / "screenshots").mkdir(parents=True, exist_ok=True)
        driver.save_screenshot("test-artifacts/screenshots/bench-journey-1m.png")
        driver.quit()
        # a browser that never saw the app (no cached JS) against the warm server: the frontend's share
        driver = make_driver(str(tmp / "profile-2"))
        fresh_browser = time_to_interactive(driver, url, charts=4)
        server_peak = _peak_rss(proc.pid)
    finally:
        if driver is not None:
            driver.quit()
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nJourney page of a {args.steps:,}-step, {args.ranks}-rank run ({rows:,} metric points, "
          f"{disk / 1e6:.1f} MB Parquet; built in {build_s:.1f} s"
          + (f"; compact() + LOD call {compact_s:.1f} s" if compact_s is not None else ", raw segments, no LOD")
          + "), headless Chromium 1440x900\n")
    from bench._harness import summary

    summary("journey page", f"{args.steps:,}-step × {args.ranks}-rank run in headless Chromium: first visit / "
            "revisit / zoom", f"{cold:.2f} s / {statistics.median(warm):.2f} s / {statistics.median(zoom):.2f} s",
            "budget ≤ 3 s (verdicts in the rows below)", None, server_peak)
    print(f"Peak RSS of the app server: {server_peak / 2**20:.0f} MiB\n" if server_peak else "")
    print("| measurement | time | budget |")
    print("|---|---|---|")
    print(f"| first visit (new server process and browser profile; median of {len(colds)}: "
          f"{', '.join(f'{c:.2f}' for c in colds)}) | {cold:.2f} s | ≤ 3 s |")
    print(f"| first visit of a new browser profile, server warm | {fresh_browser:.2f} s | — |")
    print(f"| revisit (new session, query caches warm; median of {len(warm)}) | "
          f"{statistics.median(warm):.2f} s | ≤ 3 s |")
    print(f"| zoom deep link, 50k-step window at full resolution (median of {len(zoom)}) | "
          f"{statistics.median(zoom):.2f} s | ≤ 3 s |")


if __name__ == "__main__":
    main()
