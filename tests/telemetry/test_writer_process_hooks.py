"""The writer's process-wide hooks (telemetry.write.process_hooks): a script that never calls
close() still gets its final segments and end rows at exit, "crashed" after an uncaught exception;
a writer closed before a fork stays closed in the child."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import pytest

from telemetry import Writer

SCRIPT = """
import sys
from telemetry import Writer, WriterConfig
w = Writer(sys.argv[1], "left open", writer_config=WriterConfig(flush_interval_s=0.1, segment_interval_s=3600))
for i in range(100):
    w.metric(i, "loss", float(i))
w.event("note", step=1, message="before the end")
"""


def _run_script(archive: str, tail: str = "") -> subprocess.CompletedProcess:
    code = textwrap.dedent(SCRIPT) + textwrap.dedent(tail)
    return subprocess.run([sys.executable, "-c", code, archive], capture_output=True, text=True, timeout=120)


def _latest(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["updated_at"])


def test_a_writer_left_open_is_closed_at_exit_and_the_run_finishes(archive, rd):
    proc = _run_script(archive)
    assert proc.returncode == 0, proc.stderr
    assert sorted(rd.table(archive, "metrics").column("step").to_pylist()) == list(range(100))
    assert [e["kind"] for e in rd.table(archive, "events").to_pylist()] == ["note"]
    assert _latest(rd.table(archive, "runs").to_pylist())["status"] == "finished"
    assert _latest(rd.table(archive, "attempts").to_pylist())["end_status"] == "finished"
    assert not glob.glob(os.path.join(archive, "_staging", "*", "*", "*.arrows")), "every batch is in a segment"
    assert not glob.glob(os.path.join(archive, "_staging", "_live", "*.json")), "the heartbeat is removed"


def test_an_uncaught_exception_marks_a_writer_left_open_crashed(archive, rd):
    proc = _run_script(archive, 'raise RuntimeError("training failed")\n')
    assert proc.returncode == 1 and "training failed" in proc.stderr, "the previous excepthook still prints"
    assert sorted(rd.table(archive, "metrics").column("step").to_pylist()) == list(range(100))
    assert _latest(rd.table(archive, "runs").to_pylist())["status"] == "crashed"
    assert _latest(rd.table(archive, "attempts").to_pylist())["end_status"] == "crashed"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_writer_closed_before_a_fork_stays_closed_in_the_child(archive, fast, rd):
    w = Writer(archive, "closed then forked", writer_config=fast)
    w.metric(0, "loss", 1.0)
    w.close()
    pid = os.fork()
    if pid == 0:  # child: nothing is written, nothing raises, nothing waits
        code = 1
        try:
            w.metric(1, "loss", 2.0)
            ok = w.flush(timeout=5) and w.dropped == 1
            w.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rd.table(archive, "metrics").column("step").to_pylist() == [0]
    assert [r["status"] for r in rd.table(archive, "runs").to_pylist()].count("finished") == 1
