"""Compaction while runs are live: bounded file counts, a live writer's newest part never merged,
tiers merged as they fill, one compactor per run, the writer's thread, the --follow sidecar, and
crashed attempts compacted by `flightlog index`."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading

import pytest

from data_schema import staged_path
from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain import compactor_lease
from telemetry.maintain.compaction import CompactionConfig, compact
from telemetry.maintain.live_compactor import LivePolicy, compact_live_run, follow, run_in_writer
from telemetry.store.fs import open_fs
from telemetry.store.liveness import live_filter, read_records, resolve

EAGER = LivePolicy(interval_s=0.0, min_parts=1, fanout=2, settle_s=0.0, grace_s=0.0)
NO_LOD = CompactionConfig(lod=False)


def cfg(**kw) -> WriterConfig:
    base = {"flush_interval_s": 0.02, "segment_interval_s": 0.0, "close_timeout_s": 20, "compact_on_close": False,
            "live_compaction": False}
    return WriterConfig(**(base | kw))


def counts(root: str, run: str = "r") -> dict[tuple[int, int], int]:
    a = Archive(root, recover=False)
    try:
        t = a.sql(f"SELECT rank, step, count(*) AS n FROM metrics WHERE run_id = '{run}' GROUP BY rank, step")
    finally:
        a.close()
    return {(r["rank"], r["step"]): r["n"] for r in t.to_pylist()}


def live_metric_files(root: str, run: str = "r") -> set[str]:
    fs, base = open_fs(root)
    rels = {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "metrics", f"run_id={run}", "*.parquet"))}
    keep, _ = live_filter(rels, read_records(fs, base, run_id=run))
    return keep


def parts_of(root: str, rank: int, run: str = "r") -> list[str]:
    return sorted(glob.glob(os.path.join(root, "metrics", f"run_id={run}", f"part-a0-r{rank}-*")))


def test_a_live_runs_files_stay_about_one_per_writer_and_no_point_is_lost_or_doubled(archive):
    writers = [Writer(archive, "r", rank=k, attempt=0, writer_config=cfg()) for k in range(4)]
    fs, root = open_fs(archive)
    step = 0
    for _interval in range(12):
        for _ in range(5):
            for w in writers:
                w.metrics(step, {"loss": 1.0, "lr": 0.1})
            step += 1
        for w in writers:
            assert w.flush()
        newest = {k: parts_of(archive, k)[-1] for k in range(4)}
        report = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
        assert not report.problems
        live = live_metric_files(archive)
        for k in range(4):  # a live writer's newest part is never merged: it may be rewritten
            assert os.path.relpath(newest[k], archive) in live
        assert len(live) <= 4 + 3, live  # one part per writer and a compact file per filled tier
        assert set(counts(archive).values()) == {2}
    for w in writers:
        w.close()
    assert counts(archive) == {(k, s): 2 for k in range(4) for s in range(step)}
    report = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)  # the writers are gone: all of it
    assert report.parts_merged >= 4 and not report.problems
    assert len([f for f in live_metric_files(archive) if "/part-" in f]) == 0
    assert counts(archive) == {(k, s): 2 for k in range(4) for s in range(step)}
    tiers = [r.get("tier", 0) for r in read_records(fs, root, run_id="r") if r["table"] == "metrics"]
    assert max(tiers) >= 2, "compact files of a tier were merged into the next as they filled"
    compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
    records = [r for r in read_records(fs, root, run_id="r") if r["table"] == "metrics"]
    assert len(records) <= 6, "records of files merged into a higher tier go once their parts went"
    assert counts(archive) == {(k, s): 2 for k in range(4) for s in range(step)}


def test_a_compact_file_merged_into_a_higher_tier_and_deleted_still_replaces_its_parts():
    part = "metrics/run_id=r/part-a0-r0-{:08d}.parquet".format
    c1, c2, c3 = (f"metrics/run_id=r/compact-0-9-{u * 16}.parquet" for u in "abc")
    r1 = {"file": c1, "replaces": [part(1), part(2)], "created_at": "2026-01-01T00:00:01", "uid": "a"}
    r2 = {"file": c2, "replaces": [part(3)], "created_at": "2026-01-01T00:00:02", "uid": "b"}
    r3 = {"file": c3, "replaces": [c1, c2], "created_at": "2026-01-01T00:00:03", "uid": "c"}
    # c1 and c2 are gone (merged into c3 a grace period ago); part 2 is an empty watermark still there
    res = resolve([r1, r2, r3], {c3, part(2), part(4)})
    assert [r["uid"] for r in res.accepted] == ["a", "b", "c"]
    assert res.compacts == {c3} and part(2) in res.replaced
    assert live_filter({c3, part(2), part(4)}, [r1, r2, r3])[0] == {c3, part(4)}


def test_a_part_at_or_after_the_writers_lowest_staged_seq_is_not_merged(archive):
    w = Writer(archive, "r", attempt=0, writer_config=cfg(segment_interval_s=3600))
    for s in range(50):
        w.metric(s, "loss", 1.0)
        if s % 10 == 9:
            assert w.flush()
            w._flusher.cycle(segment_due=True)  # a segment per 10 steps
    for s in range(50, 60):
        w.metric(s, "loss", 1.0)
    assert w.flush()  # staged, not yet in a segment
    fs, root = open_fs(archive)
    parts = parts_of(archive, 0)
    seqs = [int(p.rsplit("-", 1)[1].split(".")[0]) for p in parts]
    assert len(parts) == 5
    # a staged file of a seq below the third part's (a batch still in flight): that part and later stay
    held = os.path.join(archive, staged_path("metrics", "r", 0, 0, seqs[2]))
    with open(held, "wb") as fh:
        fh.write(b"")
    report = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
    assert report.parts_merged == 2
    os.remove(held)
    report = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
    assert report.parts_merged == 2  # all but the newest
    assert parts_of(archive, 0) == [parts[-1]]
    w.close()
    assert counts(archive) == {(0, s): 1 for s in range(60)}


def test_the_writer_of_rank_0_runs_the_compactor_on_its_own_thread_and_stops_it_at_close(archive):
    def compactor(fs, root, run_id, stop, interval_s):
        run_in_writer(fs, root, run_id, stop, interval_s=interval_s, policy=EAGER, config=NO_LOD)

    conf = cfg(live_compaction=True, live_compaction_interval_s=0.05)
    w0 = Writer(archive, "r", rank=0, attempt=0, writer_config=conf, live_compactor=compactor)
    w1 = Writer(archive, "r", rank=1, attempt=0, writer_config=conf, live_compactor=compactor)
    assert w0._compactor_thread is not None and w1._compactor_thread is None  # rank 0 only
    for s in range(300):
        w0.metric(s, "loss", 1.0)
        w1.metric(s, "loss", 1.0)
        if s % 20 == 19:
            w0.flush()
            w1.flush()
    deadline = threading.Event()
    for _ in range(100):
        if glob.glob(os.path.join(archive, "metrics", "run_id=r", "compact-*")):
            break
        deadline.wait(0.05)
    w1.close()
    w0.close()
    assert not w0._compactor_thread.is_alive()
    assert glob.glob(os.path.join(archive, "metrics", "run_id=r", "compact-*"))
    assert counts(archive) == {(k, s): 1 for k in (0, 1) for s in range(300)}
    assert compactor_lease.read_lease(*open_fs(archive), "r") is None, "the lease is released at close"


def test_live_compaction_is_off_with_the_writer_config_switch(archive):
    w = Writer(archive, "r", writer_config=cfg(live_compaction=False))
    assert w._compactor_thread is None
    w.close()


def test_a_second_compactor_leaves_a_run_alone_while_another_holds_it_and_takes_over_from_a_dead_one(archive):
    w = Writer(archive, "r", writer_config=cfg())
    w.metric(0, "loss", 1.0)
    w.close()
    fs, root = open_fs(archive)
    assert compactor_lease.claim(fs, root, "r", "first", ttl_s=60)
    assert not compactor_lease.claim(fs, root, "r", "second", ttl_s=60)
    report = follow(archive, threading.Event(), policy=EAGER, config=NO_LOD, max_passes=1)
    assert report.skipped_busy == 1
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fs.pipe_file(os.path.join(root, compactor_lease.lease_path("r")),
                 f'{{"owner": "gone", "host": "{os.uname().nodename}", "pid": {dead.pid}, "renewed_at": 1e12}}'
                 .encode())
    assert compactor_lease.claim(fs, root, "r", "second", ttl_s=60), "a dead holder's lease is stale at once"


def test_grace_0_removes_what_a_pass_replaced_in_the_same_pass(archive):
    w = Writer(archive, "r", writer_config=cfg())
    for s in range(40):
        w.metric(s, "loss", 1.0)
        if s % 10 == 9:
            w.flush()
    w.close()
    before = counts(archive)
    report = compact(archive, "r", grace_s=0)
    assert report.removed >= report.segments_replaced - 1 > 0
    assert len(glob.glob(os.path.join(archive, "metrics", "run_id=r", "part-*"))) == 1  # the watermark
    fs, root = open_fs(archive)
    w = Writer(archive, "r", attempt=0, writer_config=cfg())  # writes on after compaction
    for s in range(40, 60):
        w.metric(s, "loss", 1.0)
        w.flush()
    w2 = Writer(archive, "r", attempt=0, rank=1, writer_config=cfg())
    w2.metric(0, "loss", 1.0)
    w2.flush()
    for k in range(3):
        w.metric(60 + k, "loss", 1.0)
        w.flush()
    n_parts = len(glob.glob(os.path.join(archive, "metrics", "run_id=r", "part-*")))
    live = compact_live_run(fs, root, "r", policy=EAGER, config=NO_LOD)
    assert live.removed >= live.parts_merged > 0
    assert len(glob.glob(os.path.join(archive, "metrics", "run_id=r", "part-*"))) == n_parts - live.parts_merged
    w.close()
    w2.close()
    assert counts(archive) == before | {(0, s): 1 for s in range(40, 63)} | {(1, 0): 1}


def test_compact_follow_runs_as_a_sidecar_with_one_line_per_pass(archive):
    w = Writer(archive, "r", rank=0, attempt=0, writer_config=cfg())
    for s in range(30):
        w.metric(s, "loss", 1.0)
        w.flush()
    for part in parts_of(archive, 0):  # settled (the sidecar leaves a live writer's parts of the last 5 s)
        os.utime(part, (os.path.getmtime(part) - 60, os.path.getmtime(part) - 60))
    out = subprocess.run([sys.executable, "-m", "app.cli", "compact", archive, "--follow", "--interval", "0",
                          "--passes", "2", "--grace", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("pass ")]
    assert len(lines) == 2 and "part(s)" in lines[0]
    assert glob.glob(os.path.join(archive, "metrics", "run_id=r", "compact-*"))
    w.close()
    assert counts(archive) == {(0, s): 1 for s in range(30)}


@pytest.mark.parametrize("crash_rank", [0])
def test_index_compacts_a_crashed_attempt(archive, crash_rank):
    script = (f"import os\nfrom telemetry import Writer, WriterConfig\n"
              f"w = Writer({archive!r}, 'r', rank={crash_rank}, writer_config=WriterConfig(flush_interval_s=0.02, "
              "segment_interval_s=0.0, live_compaction=False))\n"
              "for s in range(40):\n    w.metric(s, 'loss', 1.0)\n    w.flush()\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", script], check=False, timeout=120)
    assert len(glob.glob(os.path.join(archive, "metrics", "run_id=r", "part-*"))) > 1
    out = subprocess.run([sys.executable, "-m", "app.cli", "index", archive, "--quiet"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "crashed attempts: compacted 1 run(s)" in out.stdout
    assert glob.glob(os.path.join(archive, "metrics", "run_id=r", "compact-*"))
    assert counts(archive) == {(0, s): 1 for s in range(40)}
