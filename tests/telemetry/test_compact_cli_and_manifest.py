"""`flightlog compact` from a shell, and the manifest after a compaction: replaced parts are not live."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.compaction import compact
from telemetry.maintain.manifest import write_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_run(root: str, run: str = "cli run", steps: int = 600) -> None:
    w = Writer(root, run, writer_config=WriterConfig(flush_interval_s=0.05, segment_interval_s=3600,
                                                     segment_rows=200, close_timeout_s=20, compact_on_close=False))
    for s in range(steps):
        w.metrics(s, {"loss": 2.0 - s / steps if s != 77 else float("nan"), "lr": 1e-3}, wall_time=1.7e9 + s)
        if s % 200 == 0:
            w.flush()
    w.close()


def flightlog(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": ROOT})


def loss_rows(root: str) -> list:
    with Archive(root) as a:
        rows = a.sql("SELECT step, value, attempt, rank FROM metrics WHERE name = 'loss' ORDER BY step").to_pylist()
    return [{**r, "value": "NaN" if r["value"] != r["value"] else r["value"]} for r in rows]  # NaN != NaN


def test_compact_command_prints_a_summary_and_removes_replaced_parts_after_the_grace_period(archive):
    write_run(archive)
    before = loss_rows(archive)
    parts = glob.glob(os.path.join(archive, "metrics", "run_id=*", "part-*.parquet"))
    assert len(parts) >= 3
    done = flightlog("compact", archive, "--run", "cli run", "--grace", "3600", "--quiet")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    replaced = int(line.split(" segment(s) replaced")[0].rsplit(" ", 1)[-1])
    rows = int(line.split(" rows")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert line.startswith("compacted 1 run(s)") and replaced > len(parts), line  # metrics and the other tables
    assert rows >= 1200 and "0 old file(s) removed" in line and "1 LOD table(s) rebuilt" in line, line
    assert glob.glob(os.path.join(archive, "metrics", "run_id=*", "compact-*.parquet"))
    assert loss_rows(archive) == before
    # within the grace period the parts stay; with --grace 0 they go (but the watermark of the last seq)
    done = flightlog("compact", archive, "--grace", "0", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "0 file(s) written" in done.stdout and "0 old file(s) removed" not in done.stdout
    left = glob.glob(os.path.join(archive, "metrics", "run_id=*", "part-*.parquet"))
    assert len(left) == 1
    assert loss_rows(archive) == before


def test_compact_command_explains_a_wrong_run_or_archive_in_one_line(archive, tmp_path):
    write_run(archive)
    done = flightlog("compact", archive, "--run", "no such run")
    assert done.returncode != 0 and "unknown run 'no such run'" in done.stderr and "cli-run" in done.stderr
    assert "Traceback" not in done.stderr
    done = flightlog("compact", str(tmp_path / "nowhere"))
    assert done.returncode != 0 and "no flightlog archive" in done.stderr and "Traceback" not in done.stderr
    done = flightlog("compact", archive, "--grace", "-5")
    assert done.returncode != 0 and "--grace" in done.stderr and "Traceback" not in done.stderr


def test_compact_shows_a_progress_bar_on_stderr(archive):
    write_run(archive)
    done = flightlog("compact", archive, "--grace", "3600")
    assert done.returncode == 0 and "compact" in done.stderr and "run" in done.stderr


def test_the_manifest_stops_listing_replaced_parts_once_a_compaction_swapped_them(archive):
    write_run(archive)
    first = {f["path"] for f in write_manifest(archive)["files"]}
    parts = {p for p in first if "/part-" in p and p.startswith("metrics/")}
    assert len(parts) >= 3
    compact(archive, grace_s=3600)  # the parts are still on disk for the grace period
    listed = json.load(open(os.path.join(archive, "_manifest", "manifest.json")))  # rewritten by compact()
    files = {f["path"]: f for f in listed["files"]}
    compacts = [p for p in files if p.startswith("metrics/") and "/compact-" in p]
    assert len(compacts) == 1
    assert not parts & set(files), "a replaced part in the manifest would double its rows for http readers"
    assert sum(f["rows"] for p, f in files.items() if p.startswith("metrics/")) == 1200
    again = {f["path"] for f in write_manifest(archive)["files"]}
    assert again == set(files)
