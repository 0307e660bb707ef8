"""Writers on many hosts: a lease with a fencing generation, not heartbeat age, decides who writes a group.

Hosts are simulated by `FLIGHTLOG_HOST_ID` (a writer process that says it runs elsewhere, so this
host's process table cannot vouch for it); clocks are skewed by injecting the writer's clock into
its lease and the observer's monotonic clock into `LeaseObserver`; a paused writer is a real writer
process stopped with SIGSTOP and resumed with SIGCONT. Every scenario ends by counting rows: none
counted twice, none the writer flushed lost.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pyarrow as pa
import pytest

from data_schema.layout import join, segment_path, staged_path
from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.recovery import recover
from telemetry.store import encodings, heartbeat, lease, liveness, staging
from telemetry.store.fs import atomic_write_bytes, open_fs

FLUSH_S = 0.05  # a lease silent for 3 x 0.05 s has expired
OTHER_HOST = "host-b.example"


def _write_lease(root: str, *, run: str = "r", renewals: int, skew_s: float, host: str = OTHER_HOST,
                 generation: int = 0, mtime: float | None = None) -> str:
    """A lease as a writer on `host` whose clock is `skew_s` off would write it."""
    fs, _ = open_fs(root)
    path = join(root, heartbeat.heartbeat_path(run, 0, 0))
    body = heartbeat.heartbeat_bytes(run_id=run, attempt=0, rank=0, pid=4242, host=host, flush_interval_s=FLUSH_S,
                                     generation=generation, renewals=renewals, clock=lambda: time.time() + skew_s)
    atomic_write_bytes(fs, path, body)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("skew_s", [-600.0, 600.0])
def test_a_remote_lease_lives_while_its_counter_moves_whatever_the_writers_clock(tmp_path, skew_s):
    root = str(tmp_path / "a")
    fs, _ = open_fs(root)
    clock = FakeClock()
    obs = lease.LeaseObserver(clock, store_clock=False)
    for n in range(1, 6):
        _write_lease(root, renewals=n, skew_s=skew_s)  # ten minutes off either way
        live, dead = liveness.scan_heartbeats(fs, root, observer=obs)
        assert live == {("r", 0, 0)} and dead == [], n
        clock.t += 10 * FLUSH_S  # looks far apart: only the counter moving keeps it alive


@pytest.mark.parametrize("skew_s", [-600.0, 600.0])
def test_a_remote_lease_whose_counter_stops_expires_on_the_observers_clock(tmp_path, skew_s):
    root = str(tmp_path / "a")
    fs, _ = open_fs(root)
    clock = FakeClock()
    obs = lease.LeaseObserver(clock, store_clock=False)
    _write_lease(root, renewals=7, skew_s=skew_s)
    # first look: not yet known, so alive (an age rule would say dead for -600 s, alive for +600 s)
    assert liveness.scan_heartbeats(fs, root, observer=obs)[0] == {("r", 0, 0)}
    clock.t += 2 * FLUSH_S
    assert liveness.scan_heartbeats(fs, root, observer=obs)[0] == {("r", 0, 0)}  # silent, not long enough
    clock.t += 2 * FLUSH_S
    live, dead = liveness.scan_heartbeats(fs, root, observer=obs)
    assert live == set() and dead == [join(root, heartbeat.heartbeat_path("r", 0, 0))]


def test_the_stores_own_clock_settles_a_first_look(tmp_path):
    root = str(tmp_path / "a")
    fs, _ = open_fs(root)
    # renewed just now by the store's clock, though its writer's clock says an hour ago: alive
    _write_lease(root, run="fresh", renewals=1, skew_s=-3600)
    # last renewed a minute ago by the store's clock, though its writer's clock says the future: expired
    _write_lease(root, run="stale", renewals=1, skew_s=+3600, mtime=time.time() - 60)
    live, dead = liveness.scan_heartbeats(fs, root, observer=lease.LeaseObserver())
    assert live == {("fresh", 0, 0)}
    assert dead == [join(root, heartbeat.heartbeat_path("stale", 0, 0))]
    assert not [f for f in os.listdir(os.path.join(root, heartbeat.LIVE_DIR)) if f.endswith(".probe")]


def test_a_fence_above_a_leases_generation_makes_it_dead_on_any_host(tmp_path):
    root = str(tmp_path / "a")
    fs, _ = open_fs(root)
    _write_lease(root, renewals=1, skew_s=0, host=heartbeat.host_id())  # this host; pid 4242 may not exist
    path = _write_lease(root, renewals=1, skew_s=0)
    assert lease.take_over(fs, root, [path]) == 1
    assert lease.take_over(fs, root, [path]) == 0  # generation 1 is taken once
    assert lease.highest_generation(fs, root, "r", 0, 0) == 1
    assert lease.is_fenced(fs, root, "r", 0, 0, 0) and not lease.is_fenced(fs, root, "r", 0, 0, 1)
    assert liveness.scan_heartbeats(fs, root)[0] == set()
    _write_lease(root, renewals=2, skew_s=0, generation=1)  # a holder of generation 1 is not fenced by it
    assert liveness.scan_heartbeats(fs, root, observer=lease.LeaseObserver(store_clock=False))[0] == {("r", 0, 0)}


def test_exactly_one_of_many_racing_takers_creates_a_fence(tmp_path):
    fs, root = open_fs(str(tmp_path / "a"))
    path = join(root, heartbeat.fence_path("r", 0, 0, 1))
    wins: list[bool] = []
    start = threading.Barrier(8)

    def take() -> None:
        start.wait()
        wins.append(heartbeat.create_exclusive(fs, path, b"x"))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temp file left


def test_s3_fences_are_conditional_puts(moto_server):
    fs, root = open_fs(f"s3://{moto_server['bucket']}/leases-{time.time_ns()}", moto_server["storage_options"])
    path = join(root, heartbeat.fence_path("r", 0, 0, 1))
    assert heartbeat.create_exclusive(fs, path, b"first")
    assert not heartbeat.create_exclusive(fs, path, b"second")  # If-None-Match: * refused by the server
    assert fs.cat_file(path) == b"first"


def test_a_zombie_segment_landing_after_a_conversion_is_removed_and_never_counted(tmp_path):
    """A writer paused inside its segment write lands it after recovery converted the same batches."""
    archive = str(tmp_path / "a")
    fs, root = open_fs(archive)
    sch = staging.staged_schema("metrics")
    for seq in (3, 4, 5):
        batch = pa.table({"step": [seq], "name": ["loss"], "value": [float(seq)], "wall_time": [None]}, schema=sch)
        atomic_write_bytes(fs, join(root, staged_path("metrics", "z", 0, 0, seq)),
                           staging.encode_staged(batch, run_id="z", attempt=0, rank=0).to_pybytes())
    rep = recover(archive)
    assert rep.converted_batches == 3 and rep.segments_written == 1
    # the paused writer's segment of seqs 3..4 (its cut of the backlog) lands now
    steps = staging.full_table("metrics", pa.table({"step": [3, 4], "name": ["loss"] * 2, "value": [3.0, 4.0],
                                                    "wall_time": [None, None]}, schema=sch), run_id="z", attempt=0,
                               rank=0)
    atomic_write_bytes(fs, join(root, segment_path("metrics", "z", 0, 0, 4)), encodings.segment_bytes(steps))
    assert liveness.busy_groups(fs, root, "metrics", "z", live=set()) == {(0, 0)}  # compaction leaves it alone
    assert recover(archive).zombies_removed == 1
    assert _counts(archive, "z") == (3, 0)
    assert liveness.busy_groups(fs, root, "metrics", "z", live=set()) == set()


# ---- a real writer on a simulated other host, paused and resumed -----------------------------------

def _writer(url: str, run: str, steps: int, names: int, ready, go, pace_s: float) -> None:
    os.environ[heartbeat.HOST_ID_ENV] = OTHER_HOST  # this process says it runs on another machine
    cfg = WriterConfig(flush_interval_s=FLUSH_S, segment_interval_s=0.5, compact_on_close=False,
                       close_timeout_s=60)
    w = Writer(url, run=run, rank=0, attempt=0, writer_config=cfg)
    keys = [f"m{j:02d}" for j in range(names)]
    half = steps // 2
    for s in range(half):
        w.metrics(s, {k: float(s) for k in keys})
    assert w.flush(30)
    ready.set()
    go.wait(120)
    for s in range(half, steps):
        w.metrics(s, {k: float(s) for k in keys})
        if s % 100 == 0:
            time.sleep(pace_s)
    w.close()


def _start(url: str, run: str, steps: int, names: int, pace_s: float = 0.002):
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_writer, args=(url, run, steps, names, ready, go, pace_s))
    p.start()
    assert ready.wait(60), "the writer process did not start"
    return p, go


def _counts(url: str, run: str) -> tuple[int, int]:
    with Archive(url, recover=False) as a:
        n = a.sql(f"SELECT count(*) FROM metrics WHERE run_id = '{run}'").column(0)[0].as_py()
        dup = a.sql(f"SELECT count(*) - count(DISTINCT (rank, step, name)) FROM metrics "
                    f"WHERE run_id = '{run}'").column(0)[0].as_py()
    return int(n), int(dup)


def test_a_paused_remote_writer_that_comes_back_is_fenced_and_nothing_is_doubled_or_lost(archive):
    p, go = _start(archive, "paused", steps=2000, names=10)
    try:
        os.kill(p.pid, signal.SIGSTOP)  # a VM migration, as far as the archive can tell
        time.sleep(10 * FLUSH_S)
        rep = recover(archive)  # not this host's process: the lease expired by the store's clock
        assert rep.converted_batches > 0 and rep.skipped == 0, rep
        assert _counts(archive, "paused") == (1000 * 10, 0)
    finally:
        os.kill(p.pid, signal.SIGCONT)
        go.set()
        p.join(60)
    assert p.exitcode == 0
    recover(archive)  # a later pass converts whatever the writer staged before it saw the fence
    assert _counts(archive, "paused") == (2000 * 10, 0)
    with Archive(archive, recover=False) as a:
        msgs = a.sql("SELECT message FROM events WHERE kind = 'storage_error'").column(0).to_pylist()
        ranks = a.sql("SELECT DISTINCT rank FROM metrics").column(0).to_pylist()
    assert len(msgs) == 1 and "took over" in msgs[0] and "nothing is lost" in msgs[0]
    assert ranks == [0]  # rows keep their rank; only the file slot changed


def test_recovering_while_a_remote_writer_is_paused_at_random_points_never_doubles_or_loses_rows(archive):
    steps, names = 3000, 20
    p, go = _start(archive, "stress", steps=steps, names=names, pace_s=0.1)  # about 1.5 s of writing
    go.set()
    rng = random.Random(int(os.environ.get("LEASE_SEED", "11")))
    rounds = 0
    deadline = time.monotonic() + 20
    try:
        while p.is_alive() and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.08))
            try:
                os.kill(p.pid, signal.SIGSTOP)
            except ProcessLookupError:
                break
            time.sleep(rng.choice([FLUSH_S, 5 * FLUSH_S]))  # sometimes long enough to be taken over
            if rng.random() < 0.5:
                os.kill(p.pid, signal.SIGCONT)  # racing the writer as it comes back
            recover(archive)
            os.kill(p.pid, signal.SIGCONT)
            rounds += 1
    finally:
        try:
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        p.join(60)
    assert p.exitcode == 0 and rounds >= 3
    recover(archive)
    assert _counts(archive, "stress") == (steps * names, 0)
    with Archive(archive, recover=False) as a:
        fenced = a.sql("SELECT count(*) FROM events WHERE kind = 'storage_error'").column(0)[0].as_py()
    assert fenced >= 1, "no round took the writer over: the test proved nothing"
