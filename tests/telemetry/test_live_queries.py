"""Reading an archive while it is being written: no error, never a partial file, counts only grow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from telemetry import Archive, SandboxedQuery, Writer, WriterConfig

FAST = WriterConfig(flush_interval_s=0.05, segment_interval_s=0.1, segment_rows=500)
READ_FOR_S = 3.0  # each loop runs a sandboxed query (~0.4 s, a worker process): enough loops under load


def read_while_written(url: str, is_writing) -> list[int]:
    """Loop refresh + curve + SQL until the writer stops; return the metric counts seen."""
    archive = None
    while archive is None:
        try:
            archive = Archive(url)
        except Exception:  # noqa: BLE001 - the writer may not have created the archive yet
            time.sleep(0.02)
    archive.snapshot  # noqa: B018 - the first whole scan (and its recovery) before the loop, as an app's open
    sandbox = SandboxedQuery(archive, timeout_s=10)
    counts = []
    while is_writing():
        archive.refresh()
        assert archive.problems == [], archive.problems  # never a file without footer
        n = archive.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py()
        counts.append(n)
        if n:
            curve = archive.curve("live", "loss", buckets=50)
            assert curve["count"].sum() > 0 and curve["nan_count"].sum() >= 0
            assert sandbox.run("SELECT max(step) AS s FROM journey_metrics").num_rows == 1
    archive.refresh()
    counts.append(archive.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py())
    return counts


def test_queries_in_a_loop_while_a_writer_thread_writes(tmp_path):
    url = str(tmp_path / "archive")
    done = threading.Event()
    written = []

    def write() -> None:
        with Writer(url, run="live", writer_config=FAST) as w:
            step, end = 0, time.monotonic() + READ_FOR_S
            while time.monotonic() < end:
                w.metrics(step, {"loss": 1.0 / (step + 1), "lr": 1e-3})
                step += 1
                if step % 200 == 0:
                    time.sleep(0.01)
            written.append(step)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        counts = read_while_written(url, lambda: not done.is_set())
    finally:
        writer.join(30)
    assert counts == sorted(counts), "rows never disappear while written"
    assert len(counts) > 3 and counts[-1] == 2 * written[0]


@pytest.mark.timeout(60)
def test_queries_in_a_loop_while_another_process_writes(tmp_path):
    url = str(tmp_path / "archive")
    script = textwrap.dedent(f"""
        import time
        from telemetry import Writer, WriterConfig
        cfg = WriterConfig(flush_interval_s=0.05, segment_interval_s=0.1, segment_rows=500)
        with Writer({url!r}, run="live", writer_config=cfg) as w:
            end = time.monotonic() + {READ_FOR_S}
            step = 0
            while time.monotonic() < end:
                w.metric(step, "loss", float("nan") if step % 97 == 0 else 1.0)
                step += 1
                if step % 200 == 0:
                    time.sleep(0.01)
        print(step)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        counts = read_while_written(url, lambda: proc.poll() is None)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert counts == sorted(counts) and counts[-1] == int(out.strip())
