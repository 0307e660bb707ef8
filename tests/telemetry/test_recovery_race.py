"""Recovery and compaction against a live writer starved of CPU: no row is ever doubled.

The load test once found 502,400 duplicated rows of rank 0: readers opening `Archive` run
recovery, which took a writer whose heartbeat was a few flush intervals old (8 writers and 4
readers on 2 cores) for dead and converted its staged batches while that writer was about to
segment them too. A writer process stopped with SIGSTOP is the most starved writer there is:
its heartbeat goes stale while its process lives. On its own host the process decides.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from data_schema.layout import STAGING_DIR
from telemetry import Archive
from telemetry.maintain.compaction import compact
from telemetry.maintain.recovery import recover
from telemetry.store import heartbeat

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")

FLUSH_S = 0.05  # heartbeat stale after 3 x 0.05 s


def _writer(url: str, steps: int, names: int, ready, go) -> None:
    from telemetry import Writer, WriterConfig

    cfg = WriterConfig(flush_interval_s=FLUSH_S, segment_interval_s=float(os.environ.get("RACE_SEG_S", "0.2")),
                       compact_on_close=True, compact_min_rows=1, close_timeout_s=60)
    w = Writer(url, run="race", rank=0, attempt=0, writer_config=cfg)
    keys = [f"m{j:02d}" for j in range(names)]
    half = steps // 2
    for s in range(half):
        w.metrics(s, {k: float(s) for k in keys})
    w.flush()
    ready.set()
    go.wait(120)
    for s in range(half, steps):
        w.metrics(s, {k: float(s) for k in keys})
        if s % 500 == 0:
            time.sleep(0.002)
    w.close()


def _staged(url: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(os.path.join(url, STAGING_DIR, "metrics")):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".arrows")]
    return out


def _counts(url: str) -> tuple[int, int]:
    with Archive(url, recover=False) as a:
        n = a.sql("SELECT count(*) FROM metrics").column(0)[0].as_py()
        dup = a.sql("SELECT count(*) - count(DISTINCT (rank, step, name)) FROM metrics").column(0)[0].as_py()
    return int(n), int(dup)


def _start(url: str, steps: int, names: int):
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_writer, args=(url, steps, names, ready, go), name="race-writer")
    p.start()
    assert ready.wait(60), "the writer process did not start"
    return p, go


def test_recovery_leaves_a_stalled_but_living_writer_alone(archive):
    p, go = _start(archive, steps=2000, names=20)
    try:
        assert _staged(archive), "the writer staged its first half"
        os.kill(p.pid, signal.SIGSTOP)  # starved: its heartbeat goes stale, its process lives
        time.sleep(10 * FLUSH_S)
        staged_before = sorted(_staged(archive))
        report = recover(archive)
        assert report.converted_batches == 0 and report.segments_written == 0, report
        assert report.skipped >= len(staged_before) and report.attempts_marked_crashed == 0, report
        assert sorted(_staged(archive)) == staged_before  # nothing of the writer's was touched
        comp = compact(archive, "race", grace_s=0)
        assert comp.files_written == 0, comp  # nor compacted under it
    finally:
        os.kill(p.pid, signal.SIGCONT)
        go.set()
        p.join(60)
    assert p.exitcode == 0
    assert _counts(archive) == (2000 * 20, 0)
    with Archive(archive) as a:  # the run is finished, not crashed
        status = a.sql("SELECT status FROM runs").column(0).to_pylist()
        assert status == ["finished"], status


def test_readers_recovering_in_a_loop_against_a_starved_writer_never_double_rows(archive):
    """Stress: stop the writer at random points (mid-stage, mid-segment), let the heartbeat go
    stale, resume it and recover at the same moment, over and over, until it closes."""
    steps, names = 8000, 50
    p, go = _start(archive, steps=steps, names=names)
    go.set()
    rng = random.Random(7)
    rounds = 0
    deadline = time.monotonic() + 40
    try:
        while p.is_alive() and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.05))
            try:
                os.kill(p.pid, signal.SIGSTOP)
            except ProcessLookupError:
                break
            time.sleep(4 * FLUSH_S)
            if rng.random() < 0.5:
                os.kill(p.pid, signal.SIGCONT)  # racing the writer, not only a frozen one
            rep = recover(archive)
            assert rep.converted_batches == 0, rep
            os.kill(p.pid, signal.SIGCONT)
            rounds += 1
    finally:
        try:
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        p.join(60)
    assert p.exitcode == 0 and rounds >= 3
    assert _counts(archive) == (steps * names, 0)


def test_liveness_on_this_host_is_the_process_not_the_heartbeat_age():
    host = socket.gethostname()
    me = os.getpid()
    start = heartbeat.process_start(me)
    old = time.time() - 3600
    hb = {"run_id": "r", "attempt": 0, "rank": 0, "flush_interval_s": 0.1, "updated_at": old}
    # a living process with an hour-old heartbeat: alive (a starved writer)
    assert heartbeat.writer_is_alive({**hb, "pid": me, "host": host, "pid_start": start})
    assert heartbeat.writer_is_alive({**hb, "pid": me, "host": host, "pid_start": None})  # an older writer's heartbeat
    # the same pid, another start time: the pid was reused, the writer is dead
    if start is not None:
        assert not heartbeat.writer_is_alive({**hb, "pid": me, "host": host, "pid_start": start + 1})
    # a process that exited: dead, however fresh its heartbeat
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not heartbeat.writer_is_alive({**hb, "updated_at": time.time(), "pid": gone.pid, "host": host,
                                        "pid_start": None})
    # another host: one lease cannot tell, whatever its age (lease.LeaseObserver watches its renewals)
    other = "not-" + host
    assert heartbeat.writer_is_alive({**hb, "pid": me, "host": other, "pid_start": start}) is None
    assert heartbeat.writer_is_alive({**hb, "updated_at": time.time(), "pid": me, "host": other,
                                      "pid_start": start}) is None
    # the writer's heartbeat records its start time
    raw = heartbeat.heartbeat_bytes(run_id="r", attempt=0, rank=0, pid=me, host=host, flush_interval_s=0.1)
    assert heartbeat.parse_heartbeat(raw)["pid_start"] == start


def test_a_dead_writers_staged_files_are_still_recovered_at_once(archive):
    """The other side of the rule: a killed writer (same host) is recovered without waiting."""
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_writer, args=(archive, 2000, 20, ready, go))
    p.start()
    assert ready.wait(60)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    report = recover(archive)
    assert report.converted_batches > 0 and report.attempts_marked_crashed == 1, report
    assert not _staged(archive)
    n, dup = _counts(archive)
    assert n == 1000 * 20 and dup == 0


def test_live_view_does_not_count_a_leftover_staged_batch_of_a_compacted_part(archive):
    """A writer that could not delete a staged file after segmenting it leaves it behind; once
    its part is compacted (replaced, so not read), the part's seq must still cover that file."""
    import shutil

    from telemetry import Writer, WriterConfig
    from telemetry.maintain.wired import LiveArchive

    cfg = WriterConfig(flush_interval_s=60, segment_interval_s=3600, compact_min_rows=1, close_timeout_s=30)
    w = Writer(archive, run="left", rank=0, attempt=0, writer_config=cfg)
    for s in range(500):
        w.metrics(s, {"loss": 1.0 / (s + 1), "lr": 1e-4})
    assert w.flush(30)
    leftover = _staged(archive)
    assert len(leftover) == 1
    keep = leftover[0] + ".keep"
    shutil.copy(leftover[0], keep)
    w.close()  # segments, removes the staged file, compacts the run (rank 0)
    assert not _staged(archive)
    assert any("compact-" in f for f in os.listdir(os.path.join(archive, "metrics", "run_id=left")))
    os.replace(keep, leftover[0])  # the staged file its writer failed to delete
    with LiveArchive(archive, recover=False) as a:  # the live rule itself, not recovery
        n = a.sql("SELECT count(*) FROM metrics").column(0)[0].as_py()
    assert n == 1000
