"""bench/bench_gpu_step.py runs end to end without a GPU (a tiny model on the CPU), so the script the GPU
figures come from is known to work before a GPU machine is lent."""

from __future__ import annotations

import pytest

from bench import bench_gpu_step

pytestmark = pytest.mark.timeout(300)


def test_the_gpu_step_bench_runs_on_cpu_and_prints_one_table(capsys):
    rc = bench_gpu_step.main(["--cpu", "--steps", "4", "--block", "2", "--warmup", "1", "--sync-steps", "1",
                              "--nvml-interval", "0.05"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert lines[0] == "| measurement | value | verdict |"
    assert all(ln.count("|") == 4 for ln in lines)  # one table, three columns
    cells = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in lines[2:]}
    assert cells["steps per arm, interleaved"].startswith("4 in blocks of 2 (ABBA)")
    assert "% [" in cells["attached - bare, % of step time"]  # a median with its interval
    assert cells["synchronizing calls, attached steps"] == "n/a (no CUDA device)"
    assert "host rows only" in cells["sampler"] or "NVML on" in cells["sampler"]
    assert any(k.strip().startswith("cpu.util") for k in cells)  # the sampler's rows, summarised
    assert "GPU figures are still to be taken" in out
