"""The app's launcher (app/ui/launch.py): `flightlog ui` does the first visit's server work before the
first visitor arrives, on a real Streamlit server over the fixture archive."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from app.ui import chart_style, server
from app.ui.launch import warm_up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mapped(pid: int, fragment: str) -> bool:
    """Whether a shared library whose path holds `fragment` is loaded into process `pid`."""
    try:
        return fragment in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_warm_up_opens_the_archive_without_a_streamlit_runtime(fixture_archive):
    # no runtime in pytest: the runs list has nowhere to be cached, the archive is still opened
    assert warm_up(["--archive", fixture_archive], runtime_wait_s=0.0) == "opened"


def test_warm_up_of_a_bad_archive_gives_up_quietly(tmp_path, capsys):
    missing = tmp_path / "no-archive-here"
    assert warm_up(["--archive", str(missing)], runtime_wait_s=0.0) == "failed"
    assert "Traceback" not in capsys.readouterr().err
    assert not missing.exists(), "a warm-up never creates an archive"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_flightlog_ui_server_imports_duckdb_and_opens_the_archive_before_any_visit(fixture_archive, tmp_path):
    port = _free_port()
    cmd = server.command(fixture_archive, port)
    assert cmd[1:4] == ["-m", "app.ui.launch", "run"]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and not (healthy and _mapped(proc.pid, "duckdb")):
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    healthy = r.status == 200
            except OSError:
                pass
            time.sleep(0.2)
        assert healthy, "the server answers while the warm-up runs"
        assert _mapped(proc.pid, "duckdb"), "duckdb is loaded by the warm-up, with no browser session yet"
        time.sleep(1.0)  # the warm-up's runs query, after the runtime started
    finally:
        server.stop(proc)
    text = log.read_text()
    assert "missing ScriptRunContext" not in text and "No runtime found" not in text and "Traceback" not in text


def test_buckets_follow_the_chart_width_and_never_drop_below_a_readable_floor():
    assert chart_style.buckets_for_width(480) == 320
    assert chart_style.buckets_for_width(960) == 640
    assert chart_style.buckets_for_width(10) == 50
