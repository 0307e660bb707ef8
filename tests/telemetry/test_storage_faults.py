"""Storage faults under a live writer: the object store goes away and comes back, the disk fills
up, a folder turns read-only. Training never raises or stalls; the writer spools (remote) or
holds (local) within bounds, retries with capped backoff, writes everything once storage is
back (exact row counts), and says what happened in `storage_error` / `storage_recovered` events.

Every fault is real: a moto S3 server on loopback that is stopped and restarted, a tmpfs of a
few MiB that is filled to ENOSPC, and a writer process without CAP_DAC_OVERRIDE (setpriv) in a
folder chmod-ed read-only, because root ignores file modes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pyarrow as pa
import pytest

from telemetry import Writer, WriterConfig
from telemetry.maintain.recovery import recover
from telemetry.store.fs import open_fs
from telemetry.write.spool import archive_key
from tests.telemetry.conftest import read_fs

SLOW_CALL_S = 0.25  # a logging call slower than this would be felt by a training step


def _cfg(**kw) -> WriterConfig:
    return WriterConfig(flush_interval_s=0.1, segment_interval_s=3600, close_timeout_s=30, max_backoff_s=0.5,
                        compact_on_close=False, **kw)


def _wait_for(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _log_steps(w: Writer, steps: range, *, event_every: int = 0) -> float:
    """The training side: log each step, return the slowest call (seconds)."""
    slowest = 0.0
    for i in steps:
        t = time.perf_counter()
        w.metrics(i, {"loss": 1.0 / (i + 1), "lr": 1e-4})
        if event_every and i % event_every == 0:
            w.event("note", step=i, message=f"step {i}")
        slowest = max(slowest, time.perf_counter() - t)
    return slowest


def _events(url: str, kind: str, so: dict | None = None) -> list[dict]:
    return [e for e in read_fs(url, "events", so).to_pylist() if e["kind"] == kind]


def _spooled_files(folder: str) -> list[str]:
    return [os.path.join(d, n) for d, _, ns in os.walk(folder) for n in ns if n.endswith(".arrows")]


# ---- object store outage (moto server stopped and started) -------------------------------------

def test_object_store_outage_spools_on_local_disk_and_loses_nothing_when_it_returns(moto_server, tmp_path):
    url, so = f"s3://{moto_server['bucket']}/{uuid.uuid4().hex}", moto_server["storage_options"]
    spool = str(tmp_path / "spool")
    w = Writer(url, "s3 outage spool", storage_options=so, writer_config=_cfg(spool_dir=spool))
    _log_steps(w, range(0, 200), event_every=50)
    assert w.flush(20)
    server = moto_server["server"]
    server.stop()
    outage_start = time.monotonic()
    try:
        slowest = 0.0
        for chunk in range(10):  # ~3 s of training while the store is away
            slowest = max(slowest, _log_steps(w, range(200 + chunk * 300, 200 + (chunk + 1) * 300), event_every=50))
            time.sleep(0.3)
        assert w.flush(timeout=0.5) is False  # cannot reach the store, says so, raises nothing
        spooled = _spooled_files(spool)
        assert spooled, "batches the store refused wait on local disk"
        assert w._flusher.storage.backlog_bytes == 0, "spooled batches are not also kept in memory"
    finally:
        server.start()
    outage_s = time.monotonic() - outage_start
    assert w.flush(timeout=30)
    w.close()
    total = 200 + 10 * 300
    steps = sorted(read_fs(url, "metrics", so).filter(pa.compute.equal(pa.compute.field("name"), "loss"))
                   .column("step").to_pylist())
    assert steps == list(range(total)), "every step exactly once"
    assert read_fs(url, "metrics", so).num_rows == 2 * total
    assert len(_events(url, "note", so)) == total // 50
    [err] = _events(url, "storage_error", so)
    [back] = _events(url, "storage_recovered", so)
    assert err["severity"] == "warning" and back["severity"] == "info"
    details = json.loads(back["details_json"])
    assert details["dropped_records"] == 0 and details["spooled_batches"] >= len(spooled)
    assert outage_s - 1.0 <= details["outage_s"] <= outage_s + 2.0
    assert not _events(url, "dropped_records", so) and w.dropped == 0
    assert slowest < SLOW_CALL_S
    assert not _spooled_files(spool), "the spool is emptied once its rows are in segments"


def test_outage_longer_than_the_spool_bound_drops_and_counts_the_rest(moto_server, tmp_path):
    url, so = f"s3://{moto_server['bucket']}/{uuid.uuid4().hex}", moto_server["storage_options"]
    # a batch of 300 steps is ~20 kB: a few fit on the spool, a few more in memory, the rest must go
    cfg = _cfg(spool_dir=str(tmp_path / "spool"), spool_max_bytes=60_000, backlog_max_bytes=60_000)
    w = Writer(url, "s3 outage bound", storage_options=so, writer_config=cfg)
    assert w.flush(20)
    server = moto_server["server"]
    server.stop()
    try:
        # The writer must have seen the outage before the data comes, and have held or dropped every
        # batch before storage returns: else a slow cycle could carry it all across the outage.
        _wait_for(lambda: w._flusher.storage.failures > 0, "the writer to notice the outage")
        for chunk in range(12):
            _log_steps(w, range(chunk * 300, (chunk + 1) * 300))
            time.sleep(0.2)
        _wait_for(lambda: not w._multi and all(b.staged or b.spooled or b.held
                                               for b in w._flusher.pending.get("metrics", [])),
                  "the writer to hold or drop every batch")
    finally:
        server.start()
    assert w.flush(timeout=30)
    w.close()
    written = read_fs(url, "metrics", so).num_rows
    assert w.dropped > 0 and written > 0
    assert written + w.dropped == 2 * 12 * 300, "every record is either in the archive or counted as dropped"
    [ev] = _events(url, "dropped_records", so)
    assert json.loads(ev["details_json"])["dropped_storage"] == w.dropped
    assert json.loads(_events(url, "storage_recovered", so)[0]["details_json"])["dropped_records"] == w.dropped


SPOOLING_WRITER = textwrap.dedent("""
    import json, os, sys, time
    from telemetry import Writer, WriterConfig
    url, so, spool = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    cfg = WriterConfig(flush_interval_s=0.1, segment_interval_s=3600, max_backoff_s=0.5, spool_dir=spool)
    w = Writer(url, "killed while spooling", storage_options=so, writer_config=cfg)
    for i in range(100):
        w.metric(i, "loss", float(i))
    assert w.flush(20)
    print("staged", flush=True)
    sys.stdin.readline()                 # the store is now away
    for i in range(100, 300):
        w.metric(i, "loss", float(i))
    assert not w.flush(1.0)
    deadline = time.monotonic() + 30
    while not any(n.endswith(".arrows") for _, _, ns in os.walk(spool) for n in ns) and time.monotonic() < deadline:
        time.sleep(0.05)                 # the flush thread spools after the store's first refusal
    print("spooled", flush=True)
    time.sleep(600)                      # killed here
""")


def test_writer_killed_during_an_outage_leaves_a_spool_that_recovery_uploads(moto_server, tmp_path):
    url, so = f"s3://{moto_server['bucket']}/{uuid.uuid4().hex}", moto_server["storage_options"]
    spool = str(tmp_path / "spool")
    proc = subprocess.Popen([sys.executable, "-c", SPOOLING_WRITER, url, json.dumps(so), spool],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server = moto_server["server"]
    try:
        assert proc.stdout.readline().strip() == "staged"
        server.stop()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "spooled"
        assert _spooled_files(spool)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        server.start()
    fs, root = open_fs(url, so)
    report = recover(url, storage_options=so, spool_dir=spool)
    assert report.spooled_uploaded >= 1 and report.runs_marked_crashed == 1
    steps = sorted(read_fs(url, "metrics", so).column("step").to_pylist())
    assert steps == list(range(300)), "staged and spooled rows both arrive, each once"
    assert not os.listdir(os.path.join(spool, archive_key(fs, root)))
    assert recover(url, storage_options=so, spool_dir=spool).spooled_uploaded == 0  # idempotent


# ---- local disk full (a real tmpfs filled to ENOSPC) ------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path):
    """A 6 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: str) -> str:
    """Write a file until the disk says ENOSPC; return its path."""
    path = os.path.join(folder, "filler")
    chunk = b"\0" * (64 << 10)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    return path


def test_full_local_disk_holds_batches_in_memory_and_writes_them_once_space_returns(small_disk):
    archive = os.path.join(small_disk, "archive")
    w = Writer(archive, "disk full", writer_config=_cfg())
    _log_steps(w, range(0, 100))
    assert w.flush(20)
    filler = _fill(small_disk)
    full_start = time.monotonic()
    try:
        slowest = 0.0
        for chunk in range(6):
            slowest = max(slowest, _log_steps(w, range(100 + chunk * 500, 100 + (chunk + 1) * 500), event_every=100))
            time.sleep(0.25)
        assert w.flush(timeout=0.5) is False
        assert w._flusher.storage.backlog_bytes > 0, "a local archive without spool keeps the batches in memory"
    finally:
        os.remove(filler)
    full_s = time.monotonic() - full_start
    assert w.flush(timeout=30)
    w.close()
    total = 100 + 6 * 500
    metrics = read_fs(archive, "metrics")
    assert metrics.num_rows == 2 * total
    assert sorted(set(metrics.column("step").to_pylist())) == list(range(total))
    assert len(_events(archive, "note")) == 6 * 5
    [err] = _events(archive, "storage_error")
    assert "No space left" in json.loads(err["details_json"])["first_error"]
    back = json.loads(_events(archive, "storage_recovered")[0]["details_json"])
    assert back["held_batches"] > 0 and back["dropped_records"] == 0
    assert full_s - 1.0 <= back["outage_s"] <= full_s + 2.0
    assert slowest < SLOW_CALL_S and w.dropped == 0


# ---- permission denied (a writer process without CAP_DAC_OVERRIDE, folders chmod 0555) -------------

PERMISSION_WRITER = textwrap.dedent("""
    import sys, time
    from telemetry import Writer, WriterConfig
    cfg = WriterConfig(flush_interval_s=0.1, segment_interval_s=3600, max_backoff_s=0.5, compact_on_close=False)
    w = Writer(sys.argv[1], "read-only folder", writer_config=cfg)
    def steps(lo, hi):
        slowest = 0.0
        for i in range(lo, hi):
            t = time.perf_counter()
            w.metric(i, "loss", float(i))
            if i % 100 == 0:
                w.event("note", step=i, message="tick")
            slowest = max(slowest, time.perf_counter() - t)
        return slowest
    steps(0, 100)
    print("flushed", w.flush(20), flush=True)
    sys.stdin.readline()                       # folders are read-only now
    slowest = max(steps(100, 600), 0.0)
    time.sleep(1.0)
    print("flushed", w.flush(0.5), slowest, flush=True)
    sys.stdin.readline()                       # writable again
    print("flushed", w.flush(30), flush=True)
    w.close()
""")


def _chmod_tree(root: str, mode: int) -> None:
    for d, _dirs, _files in os.walk(root):
        os.chmod(d, mode)


def test_read_only_archive_folder_is_retried_and_nothing_is_lost_once_writable(tmp_path):
    archive = str(tmp_path / "archive")
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores file modes: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only for the writer")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    proc = subprocess.Popen([*prefix, sys.executable, "-c", PERMISSION_WRITER, archive],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["flushed", "True"]
        _chmod_tree(archive, 0o555)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, ok, slowest = proc.stdout.readline().split()
        assert ok == "False" and float(slowest) < SLOW_CALL_S
        _chmod_tree(archive, 0o755)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["flushed", "True"]
        assert proc.wait(60) == 0
    finally:
        _chmod_tree(archive, 0o755)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert sorted(read_fs(archive, "metrics").column("step").to_pylist()) == list(range(600))
    assert len(_events(archive, "note")) == 6
    [err] = _events(archive, "storage_error")
    assert "Permission denied" in json.loads(err["details_json"])["first_error"]
    assert json.loads(_events(archive, "storage_recovered")[0]["details_json"])["dropped_records"] == 0
