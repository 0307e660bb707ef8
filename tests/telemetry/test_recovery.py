"""recover(): a SIGKILLed writer loses at most one flush interval; staged data becomes Parquet
exactly once; live writers are left alone; dead attempts and runs are marked crashed."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq

from data_schema.layout import join, staged_path
from telemetry import Archive, Writer
from telemetry.maintain.recovery import recover
from telemetry.store import staging

KILLED_WRITER = textwrap.dedent("""
    import sys, time, math
    from telemetry import Writer, WriterConfig
    archive, log_path = sys.argv[1], sys.argv[2]
    w = Writer(archive, "killed run", writer_config=WriterConfig(flush_interval_s=0.5, segment_interval_s=3600))
    with open(log_path, "w", buffering=1) as log:
        step = 0
        while True:
            t = time.time()
            w.metric(step, "loss", math.exp(-step / 1000))
            w.metric(step, "lr", 1e-4)
            if step % 100 == 0:
                w.event("note", step=step, message="tick")
            log.write(f"{step} {t!r}\\n")
            step += 1
            time.sleep(0.001)
""")


def _dead_writer(archive: str, run: str, *, attempt: int | None = None, steps: int = 10) -> None:
    """A writer process that stages data and dies without closing (no atexit, no segments)."""
    code = textwrap.dedent(f"""
        import os
        from telemetry import Writer, WriterConfig
        w = Writer({archive!r}, {run!r}, attempt={attempt!r},
                   writer_config=WriterConfig(flush_interval_s=0.05, segment_interval_s=3600))
        for i in range({steps}):
            w.metric(i, "loss", float(i))
        assert w.flush(10)
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _staged(archive: str) -> list[str]:
    return glob.glob(os.path.join(archive, "_staging", "*", "*", "*.arrows"))


def test_killed_writer_loses_at_most_one_flush_interval(archive, tmp_path, rd):
    log_path = str(tmp_path / "steps.log")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, archive, log_path])
    try:
        time.sleep(3.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = time.time()
    logged = [line.split() for line in open(log_path).read().splitlines()]
    logged = [(int(s), float(t)) for s, t in (x for x in logged if len(x) == 2)]
    assert len(logged) > 500
    assert _staged(archive), "the write-ahead should hold the last batches"
    time.sleep(1.6)  # the dead writer's heartbeat goes stale after 3 flush intervals
    report = recover(archive)
    assert report.converted_batches > 0 and report.segments_written > 0 and report.skipped == 0
    assert report.runs_marked_crashed == 1 and report.attempts_marked_crashed == 1

    rows = rd.table(archive, "metrics").to_pylist()
    loss_steps = [r["step"] for r in rows if r["name"] == "loss"]
    assert len(loss_steps) == len(set(loss_steps)), "no row may be recovered twice"
    must_have = {s for s, t in logged if t < killed_at - 2.0}
    assert must_have <= set(loss_steps)
    assert not _staged(archive)
    for f in glob.glob(os.path.join(archive, "*", "*", "*.parquet")):
        pq.read_table(f)  # every file a reader sees is complete
    runs = sorted(rd.table(archive, "runs").to_pylist(), key=lambda r: r["updated_at"])
    assert runs[-1]["status"] == "crashed" and runs[-1]["name"] == "killed run"
    att = sorted(rd.table(archive, "attempts").to_pylist(), key=lambda r: r["updated_at"])
    assert att[-1]["end_status"] == "crashed"

    again = recover(archive)  # idempotent
    assert (again.converted_batches, again.segments_written, again.runs_marked_crashed) == (0, 0, 0)
    assert rd.table(archive, "metrics").num_rows == len(rows)


def test_staged_batch_already_in_a_segment_is_deleted_not_converted_again(archive, fast, rd):
    w = Writer(archive, "twice", writer_config=fast)
    for i in range(100):
        w.metric(i, "loss", float(i))
    assert w.flush(10)
    saved = {p: open(p, "rb").read() for p in _staged(archive)}
    w.close()
    for p, data in saved.items():  # as if the writer died between "segment written" and "staged deleted"
        with open(p, "wb") as f:
            f.write(data)
    report = recover(archive)
    assert report.converted_batches == 0 and report.staged_deleted == len(saved)
    assert rd.table(archive, "metrics").num_rows == 100 and not _staged(archive)


def test_truncated_staged_tail_is_skipped_and_the_complete_batches_kept(archive, rd):
    os.makedirs(archive)
    sch = staging.staged_schema("metrics")
    part = [pa.table({"step": [i], "name": ["loss"], "value": [float(i)], "wall_time": [None]},
                     schema=sch) for i in range(3)]
    raw = staging.encode_staged(pa.concat_tables(part), run_id="torn", attempt=0, rank=2).to_pybytes()
    path = join(archive, staged_path("metrics", "torn", 0, 2, 5))
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(raw[:-40])  # the last batch is torn
    report = recover(archive)
    assert report.truncated_files == 1 and report.converted_batches == 2
    rows = rd.table(archive, "metrics").to_pylist()
    assert [(r["step"], r["rank"], r["run_id"]) for r in rows] == [(0, 2, "torn"), (1, 2, "torn")]
    [seg] = rd.segments(archive, "metrics")
    assert seg.endswith("part-a0-r2-00000005.parquet")


def test_live_writers_staged_files_are_left_alone(archive, fast, rd):
    w = Writer(archive, "alive", writer_config=fast)
    w.metric(0, "loss", 1.0)
    assert w.flush(10)
    report = recover(archive)
    assert report.skipped >= 1 and report.converted_batches == 0 and report.attempts_marked_crashed == 0
    assert _staged(archive)
    w.close()
    assert rd.table(archive, "metrics").num_rows == 1
    assert sorted(r["status"] for r in rd.table(archive, "runs").to_pylist()) == ["finished", "running"]


def test_forced_recovery_of_a_live_writer_never_doubles_rows(archive, fast, rd):
    w = Writer(archive, "stalled", writer_config=fast)
    for i in range(100):
        w.metric(i, "loss", float(i))
    assert w.flush(10)
    assert recover(archive, force=True).converted_batches >= 1  # took the live writer for dead
    for i in range(100, 150):
        w.metric(i, "loss", float(i))
    w.close()
    steps = sorted(rd.table(archive, "metrics").column("step").to_pylist())
    assert steps == list(range(150))


def test_dead_attempt_is_crashed_but_a_later_running_attempt_keeps_the_run_running(archive, fast, rd):
    _dead_writer(archive, "resumed")
    live = Writer(archive, "resumed", writer_config=fast)
    assert live.attempt == 1
    time.sleep(0.3)  # the dead writer's heartbeat goes stale (3 x 0.05 s); the live one stays fresh
    report = recover(archive, force=False)
    assert report.attempts_marked_crashed == 1 and report.runs_marked_crashed == 0
    att = {}
    for r in sorted(rd.table(archive, "attempts").to_pylist(), key=lambda r: r["updated_at"]):
        att[r["attempt"]] = r["end_status"]
    assert att == {0: "crashed", 1: None}
    live.close()
    assert sorted(rd.table(archive, "metrics").column("step").to_pylist()) == list(range(10))


def test_old_temp_files_are_removed_only_when_asked(archive, fast):
    Writer(archive, "tmp", writer_config=fast).close()
    folder = os.path.join(archive, "metrics", "run_id=tmp")
    os.makedirs(folder, exist_ok=True)
    old, fresh = (os.path.join(folder, f"part-a0-r0-0000000{i}.parquet.tmp-abc{i}") for i in (8, 9))
    for p in (old, fresh):
        open(p, "wb").write(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert recover(archive).temps_removed == 0 and os.path.exists(old)
    assert recover(archive, remove_temp=True).temps_removed == 1
    assert not os.path.exists(old) and os.path.exists(fresh)


def test_recover_on_an_empty_or_missing_archive_does_nothing(tmp_path):
    report = recover(str(tmp_path / "nothing"))
    assert report.converted_batches == 0 and report.segments_written == 0 and not report.problems


def test_a_dead_local_writer_is_recovered_at_once_without_waiting_for_its_heartbeat(archive, rd):
    # flush interval 0.05 s, but give the heartbeat a long life: only the pid check can call it dead
    code = textwrap.dedent(f"""
        import os
        from telemetry import Writer, WriterConfig
        w = Writer({archive!r}, "gone", writer_config=WriterConfig(flush_interval_s=30, segment_interval_s=3600))
        for i in range(10):
            w.metric(i, "loss", float(i))
        assert w.flush(10)
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert _staged(archive)
    report = recover(archive)
    assert report.converted_batches > 0 and report.attempts_marked_crashed == 1
    assert sorted(r["step"] for r in rd.table(archive, "metrics").to_pylist()) == list(range(10))


def test_a_reader_of_one_run_recovers_that_run_and_leaves_the_others_to_a_whole_scan(archive):
    _dead_writer(archive, "viewed", steps=10)
    _dead_writer(archive, "other", steps=7)
    a = Archive(archive)
    assert _staged(archive) and a.recovery is None  # opening recovers nothing
    assert a.curve("viewed", "loss", buckets=5)["count"].sum() == 10  # its staged rows, recovered and read
    left = {p.split(os.sep)[-2] for p in _staged(archive)}
    assert left == {"run_id=other"}  # the other run's staged batches are not touched by a one-run reader
    assert a.recovery.runs_marked_crashed == 1  # the viewed run only: other runs' attempts are not read
    assert sorted(a.runs()["run_id"]) == ["other", "viewed"]  # a whole-archive query recovers the rest
    assert _staged(archive) == []
    assert a.runs("other")[["steps", "attempts"]].to_dict("list") == {"steps": [6], "attempts": [1]}
    statuses = {r["run_id"]: r["status"] for r in a.sql("SELECT run_id, status FROM runs").to_pylist()}
    assert statuses == {"viewed": "crashed", "other": "crashed"}
