"""Many writer processes and reader processes on one archive at once (bench/load_test.py, scaled
down): readers never fail, every offered point is written or counted as dropped, memory stays
bounded. The full size (8 writers x 200 metrics x 10k steps, 4 readers) is `python -m bench.load_test`."""

from __future__ import annotations

from bench.load_test import MIB, run_load, table

RSS_BOUND = 1024 * MIB  # per process; measured about 130-250 MiB here


def test_writers_and_readers_at_once_lose_nothing_and_readers_never_fail(archive):
    result = run_load(archive, writers=4, metrics=50, steps=1000, readers=2, step_time_s=0.003, timeout_s=240)
    print(table(result))
    assert result.problems() == []
    assert result.written == result.offered == 4 * 50 * 1000 and result.dropped == 0
    assert all(r["loops"] >= 2 for r in result.readers), result.readers  # they overlapped the writers
    assert all(p["peak_rss"] < RSS_BOUND for p in result.writers + result.readers), table(result)


def test_an_overflowing_queue_drops_counts_and_reports_every_lost_record(archive):
    result = run_load(archive, writers=2, metrics=50, steps=2000, readers=1, queue_size=20, timeout_s=240)
    print(table(result))
    assert result.problems() == []  # written + dropped == offered per rank, events agree with the writers
    assert result.dropped > 0 and result.written > 0
    assert result.written + result.dropped == result.offered
