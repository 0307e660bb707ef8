"""bench/bench_capture.py runs end to end at tiny sizes and reports bookkeeping and the reduction apart."""

from __future__ import annotations

import pytest

from bench import bench_capture

pytestmark = pytest.mark.timeout(300)


def test_the_capture_bench_reports_bookkeeping_and_reduction_apart_with_intervals(capsys):
    assert bench_capture.main(["--rounds", "3", "--block", "5", "--no-wandb"]) == 0
    out = capsys.readouterr().out
    for cost in ("grad-norm reduction (foreach_norm)", "bookkeeping, flightlog computes the norm",
                 "bookkeeping, loop clips (norm picked up)"):
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {cost} |"))
        assert row.count("[") == 3  # wall, thread and process CPU, each a median [95% CI]
    assert "| budget | measured | verdict |" in out
    assert "BENCH_SUMMARY" in out


def test_a_ratio_interval_reaching_zero_is_undecided_not_a_miss():
    # On a loaded machine a resample's wandb cost can be at or below zero: the ratio says nothing then.
    assert bench_capture.ratio_verdict((1.0, -5.0, 2.0)).startswith("undecided")
    assert bench_capture.ratio_verdict((1.0, 0.5, 2.0)) == bench_capture.verdict(False)
    assert bench_capture.ratio_verdict((40.0, 31.0, 60.0)) == bench_capture.verdict(True)
