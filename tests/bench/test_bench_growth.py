"""bench/bench_growth.py runs end to end at tiny sizes (the suite's check that `make bench` can run it):
real Writers in two processes with the sidecar compactor, readers in new processes at every point,
a moto S3 archive read through the byte-counting proxy, and the growth tables with their slopes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_growth_quick_runs_and_every_reader_point_reads_each_point_once(tmp_path):
    pytest.importorskip("moto.server")
    out = tmp_path / "growth.json"
    cmd = [sys.executable, "-m", "bench.bench_growth", "--quick", "--ranks", "4", "--intervals", "8",
           "--remote-runs", "3", "--remote-steps", "2000", "--files", "20,100", "--runs", "2,3",
           "--no-browser", "--dir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for section in ("### (a) Live", "### (b) Reader", "### (c) Remote", "### (d) Growth", "| budget |"):
        assert section in proc.stdout, section
    data = json.loads(out.read_text())
    live = data["live"]
    assert live["errors"] == [] and live["passes"] >= 1
    points = live["points"]
    assert [p["label"] for p in points] == ["during 1", "during 2", "during 3", "end"]
    for p in points:  # every point written by then is read once: none missed, none twice
        assert p["data"]["points"] == 4 * p["interval"] * 10, p
    assert live["cost"]["off"]["intervals"] > 0 and live["cost"]["on"]["intervals"] > 0
    # the compactor ran during the run: fewer metric files are read at the end than were written
    assert live["samples"][-1]["live"] < 4 * 8
    remote = data["remote"]
    assert remote["fetched"] > 0 and remote["run_bytes"] > 0 and remote["catalog"] > 0
    growth = data["growth"]
    assert growth["files"]["x"] == [20, 100] and all(v is not None for v in growth["files"]["open_s"])
    assert growth["runs"]["x"] == [2, 3] and all(v is not None for v in growth["runs"]["curve_s"])
    assert "slope (log-log fit" in proc.stdout
