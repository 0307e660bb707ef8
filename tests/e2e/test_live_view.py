"""Live view: while a writer process trains, the app re-reads the archive at the chosen interval,
shows staged (not yet segmented) steps, and never re-reads a file it has already read."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from app.ui import state
from telemetry.maintain.wired import LiveArchive

MAIN = Path(__file__).resolve().parents[2] / "app" / "ui" / "main.py"

# Phase k writes steps [100k, 100k+100), flushes (staged only: segments come every 2 s), then
# writes a marker file and waits for the test's go-file; the last phase closes the writer.
WRITER = textwrap.dedent("""
    import os, sys, time
    from telemetry import Writer, WriterConfig
    root, signals, phases = sys.argv[1], sys.argv[2], int(sys.argv[3])
    w = Writer(root, run="live-run", writer_config=WriterConfig(flush_interval_s=0.1, segment_interval_s=2.0))
    for phase in range(phases):
        for step in range(100 * phase, 100 * phase + 100):
            w.metrics(step, {"loss": 4.0 / (1 + step / 50), "lr": 1e-3})
        w.flush(timeout=10)
        open(os.path.join(signals, f"phase{phase}"), "w").close()
        while not os.path.exists(os.path.join(signals, f"go{phase}")):
            time.sleep(0.02)
    w.close()
""")


class Writing:
    """The writer process, stepped phase by phase from the test."""

    def __init__(self, root: Path, signals: Path, phases: int):
        self.signals = signals
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(signals), str(phases)],
                                     cwd=str(MAIN.parents[2]))

    def wait_phase(self, k: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not (self.signals / f"phase{k}").exists():
            assert self.proc.poll() is None, f"writer exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"writer did not reach phase {k}"
            time.sleep(0.02)

    def go(self, k: int) -> None:
        (self.signals / f"go{k}").touch()

    def stop(self) -> None:
        for p in self.signals.glob("phase*"):
            self.go(int(p.name[5:]))
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def footer_reads(monkeypatch):
    """Counts Parquet footer reads per file (the real read_metadata still runs)."""
    counts: collections.Counter[str] = collections.Counter()
    real = pq.read_metadata

    def counting(where, *args, **kwargs):
        counts[str(where)] += 1
        return real(where, *args, **kwargs)

    monkeypatch.setattr(pq, "read_metadata", counting)
    return counts


def max_step(at: AppTest) -> int:
    runs = next(df for df in at.dataframe if "steps" in df.value.columns).value
    return int(runs.loc[runs["run_id"] == "live-run", "steps"].iloc[0])


def test_refresh_param_parsing():
    assert state.parse_refresh(None) == (0, None) and state.parse_refresh("0") == (0, None)
    assert state.parse_refresh("5") == (5, None) and state.parse_refresh("0.2") == (1, None)
    for bad in ("soon", "-3", "nan"):
        seconds, problem = state.parse_refresh(bad)
        assert seconds == 0 and f"refresh={bad!r}" in problem


def test_live_archive_adds_staged_steps_and_decodes_each_staged_file_once(tmp_path, footer_reads):
    root, signals = tmp_path / "archive", tmp_path / "signals"
    signals.mkdir()
    writing = Writing(root, signals, phases=3)
    try:
        writing.wait_phase(0)
        archive = LiveArchive(str(root))
        assert archive.sql("SELECT max(step) AS s FROM metrics").column("s")[0].as_py() == 99  # staged only
        decoded = archive.staged_decoded
        archive.refresh()
        assert archive.staged_decoded == decoded  # nothing new: nothing fetched or decoded
        writing.go(0)
        writing.wait_phase(1)
        archive.refresh()
        assert archive.sql("SELECT max(step) AS s, count(*) AS n FROM metrics WHERE name = 'loss'").to_pylist() == [
            {"s": 199, "n": 200}]  # every step once, staged or segmented
        writing.go(1)
        writing.wait_phase(2)
        time.sleep(2.5)  # the writer turns staged batches into a segment meanwhile
        archive.refresh()
        assert archive.sql("SELECT count(*) AS n FROM metrics WHERE name = 'loss'").column("n")[0].as_py() == 300
    finally:
        writing.stop()
    archive.refresh()
    counts = "SELECT count(DISTINCT step) AS n, count(*) AS m FROM metrics WHERE name = 'loss'"
    assert archive.sql(counts).to_pylist() == [
        {"n": 300, "m": 300}]
    assert footer_reads  # the counter saw the catalog read footers
    repeated = {path: n for path, n in footer_reads.items() if n > 1}
    assert not repeated, f"footers read more than once: {repeated}"
    archive.close()


def test_the_app_shows_new_steps_of_a_training_run_at_the_chosen_interval(tmp_path, monkeypatch, footer_reads):
    root, signals = tmp_path / "archive", tmp_path / "signals"
    signals.mkdir()
    writing = Writing(root, signals, phases=3)
    try:
        writing.wait_phase(0)
        monkeypatch.setenv("FLIGHTLOG_ARCHIVE", str(root))
        at = AppTest.from_file(str(MAIN), default_timeout=60)
        at.query_params["refresh"] = "1"
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.sidebar.selectbox(key="refresh_select").value == 1
        assert max_step(at) == 99  # steps that exist only as staged write-ahead are shown
        for phase, expected in ((0, 199), (1, 299)):
            writing.go(phase)
            writing.wait_phase(phase + 1)
            time.sleep(1.1)  # the interval has passed: the next run re-scans
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            assert max_step(at) == expected
        reads_before = sum(footer_reads.values())
        at.run()  # within the interval: no re-scan, nothing read
        assert sum(footer_reads.values()) == reads_before
    finally:
        writing.stop()
    assert footer_reads  # the counter saw the catalog read footers
    repeated = {path: n for path, n in footer_reads.items() if n > 1}
    assert not repeated, f"footers read more than once: {repeated}"
    # the sidebar turns it off, and the URL follows
    at.sidebar.selectbox(key="refresh_select").set_value(0).run()
    assert "refresh" not in at.query_params
