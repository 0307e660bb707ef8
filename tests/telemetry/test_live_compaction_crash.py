"""Live compaction is crash-safe at every point: real writers of several ranks write while a compactor
process merges their parts and is SIGKILLed at random moments (then started again), and readers
count every (rank, step) exactly once throughout, and never lose a point an earlier reader saw.

(A listing is no snapshot: a segment written while a reader lists the folder may be missed while a
later one is seen, so a reader may see a gap that the next one fills. What compaction must never do
is make a point seen before invisible, or visible twice.) A reader that listed a run before a swap
keeps reading the files it listed for the grace period; a snapshot taken while the compactor deleted
files older than that may fail to open a file (`Archive.problems` says so, or DuckDB raises): such a
reader opens again, as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.compaction import CompactionConfig
from telemetry.maintain.live_compactor import LivePolicy, follow
from telemetry.store.fs import open_fs
from telemetry.store.liveness import read_records

NAMES = ("loss", "lr")
COMPACTOR = """
import sys, threading
from telemetry.maintain.compaction import CompactionConfig
from telemetry.maintain.live_compactor import LivePolicy, follow
print("started", flush=True)
follow(sys.argv[1], threading.Event(), runs=["r"], config=CompactionConfig(lod=False, max_file_rows=2000),
       policy=LivePolicy(interval_s=0.0, min_parts=1, fanout=2, settle_s=0.0, grace_s=1.5),
       on_pass=lambda rep: print("pass", rep.files_written, flush=True))
"""


def check_snapshot(root: str, before: dict[int, set[int]]) -> bool:
    """Read the run with a fresh reader; check every (rank, step) is there once and every point of
    `before` (what earlier readers saw) is still there, then add what it saw to `before`. False when
    the reader could not open a file deleted after the grace period (it would open again)."""
    try:
        a = Archive(root, recover=False)
    except (OSError, duckdb.Error):
        return False
    try:
        if any("skipped" in p for p in a.problems):
            return False
        t = a.sql("SELECT rank, step, count(*) AS n FROM metrics WHERE run_id = 'r' GROUP BY rank, step")
    except (OSError, duckdb.Error):
        return False
    finally:
        a.close()
    steps: dict[int, set[int]] = {}
    for row in t.to_pylist():
        assert row["n"] == len(NAMES), f"rank {row['rank']} step {row['step']} read {row['n']} times"
        steps.setdefault(row["rank"], set()).add(row["step"])
    for rank, seen in before.items():
        lost = seen - steps.get(rank, set())
        assert not lost, f"rank {rank}: {len(lost)} point(s) seen before are gone, e.g. step {min(lost)}"
    for rank, seen in steps.items():
        before.setdefault(rank, set()).update(seen)
    return True


def write(root: str, rank: int, stop: threading.Event, done: dict[int, int]) -> None:
    conf = WriterConfig(flush_interval_s=0.01, segment_interval_s=0.0, compact_on_close=False,
                        live_compaction=False, close_timeout_s=30)
    w = Writer(root, "r", rank=rank, attempt=0, writer_config=conf)
    step = 0
    while not stop.is_set():
        w.metrics(step, dict.fromkeys(NAMES, 1.0))
        step += 1
        if step % 7 == 0:
            w.flush()
    w.close()
    done[rank] = step


# no shrinking: each example runs processes for seconds; the failing example is printed as drawn
@settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranks=st.integers(2, 4),
       kills=st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 0.4)), min_size=2, max_size=3))
def test_readers_count_every_point_once_while_writers_write_and_a_compactor_is_killed_mid_merge(
        tmp_path_factory, ranks, kills):
    """`kills`: (passes to let finish, then seconds more) before each SIGKILL of a compactor process."""
    root = str(tmp_path_factory.mktemp("live") / "archive")
    Writer(root, "seed", writer_config=WriterConfig(live_compaction=False)).close()  # the archive exists
    stop = threading.Event()
    done: dict[int, int] = {}
    writers = [threading.Thread(target=write, args=(root, k, stop, done)) for k in range(ranks)]
    for t in writers:
        t.start()
    seen = killed = 0
    passes: list[str] = []
    ever: dict[int, set[int]] = {}
    try:
        for wait_passes, delay in kills:
            proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, root], stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline() == "started\n"  # imports done: what follows falls among its passes
            mine: list[str] = []
            reader = threading.Thread(target=lambda p=proc, m=mine: m.extend(iter(p.stdout.readline, "")))
            reader.start()
            deadline = time.monotonic() + 60
            while len(mine) < wait_passes and time.monotonic() < deadline:
                seen += check_snapshot(root, ever)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                seen += check_snapshot(root, ever)
            proc.send_signal(signal.SIGKILL)  # anywhere: mid-read, mid-write, between a file and its record
            proc.wait()
            reader.join()
            passes += mine
            killed += 1
            seen += check_snapshot(root, ever)
    finally:
        stop.set()
        for t in writers:
            t.join(60)
    assert killed == len(kills) and seen > 0
    swapped = len(read_records(*open_fs(root), run_id="r"))
    print(f"{ranks} ranks, {killed} kills after {len(passes)} passes, {seen} snapshots checked, {swapped} records")
    # writers closed: a compactor run to the end leaves one copy of every point
    fs, base = open_fs(root)
    follow(root, threading.Event(), runs=["r"], config=CompactionConfig(lod=False, max_file_rows=2000),
           policy=LivePolicy(interval_s=0.0, min_parts=1, fanout=2, settle_s=0.0, grace_s=0.0), max_passes=3)
    assert check_snapshot(root, ever)
    assert ever == {k: set(range(done[k])) for k in range(ranks)}
    assert read_records(fs, base, run_id="r"), "the compactor swapped files in"
    parts = [f for f in os.listdir(os.path.join(root, "metrics", "run_id=r")) if f.startswith("part-")]
    assert len(parts) <= ranks, "only each writer's empty watermark is left of its parts"
