"""A reader's own level of detail for runs not compacted yet: curves equal a full scan, nothing counted twice."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from telemetry import Archive
from telemetry.maintain.compaction import compact
from telemetry.read import lod, tail_lod
from telemetry.store.fs import ensure_root_file, open_fs
from tests.telemetry.test_lod import RUN, assert_same_curve, attempt_parts, full_scan

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def raw_archive(tmp_path, monkeypatch) -> str:
    """Attempt 0 (steps 0..59,999) and attempt 1 resuming at 50,000 (to 99,999): raw segments only."""
    monkeypatch.setattr(tail_lod, "MIN_SCAN_S", 0.0)  # every raw scan asks for a LOD, however small the run
    root = str(tmp_path / "archive")
    ensure_root_file(*open_fs(root))
    rng = np.random.default_rng(11)
    attempt_parts(root, 0, 0, 59_999, rng)
    attempt_parts(root, 1, 50_000, 99_999, rng)
    return root


def cases(rng: np.random.Generator, top: int) -> list[tuple]:
    out = [(None, None, b) for b in (1, 9, 2000)]
    for _ in range(12):
        lo = int(rng.integers(0, top))
        out.append((lo, int(rng.integers(lo, top + 100)), int(rng.choice([1, 3, 37, 320, 999]))))
    return out


def test_curves_of_raw_segments_equal_a_full_scan_once_the_reader_built_their_lod(raw_archive, monkeypatch):
    served = []
    real_sql = lod.curve_sql
    monkeypatch.setattr(lod, "curve_sql", lambda **kw: served.append(kw) or real_sql(**kw))
    a = Archive(raw_archive)
    assert RUN not in a.snapshot.lod
    first = a.curve(RUN, "loss", buckets=2000)  # a raw scan; it starts the background build
    assert not served
    assert a.wait_background(120)
    assert_same_curve(first, full_scan(a, "loss", lo=None, hi=None, buckets=2000, rank=None))
    for lo, hi, buckets in cases(np.random.default_rng(2), 99_999):
        for name in ("loss", "grad_norm"):
            got = a.curve(RUN, name, buckets=buckets, lo=lo, hi=hi)
            assert_same_curve(got, full_scan(a, name, lo=lo, hi=hi, buckets=buckets, rank=None))
        got = a.curve(RUN, "loss", buckets=buckets, lo=lo, hi=hi, rank=1)
        assert_same_curve(got, full_scan(a, "loss", lo=lo, hi=hi, buckets=buckets, rank=1))
    assert len(served) >= 2 * len(cases(np.random.default_rng(2), 99_999)), "curves must go through the LOD"
    a.close()


def test_segments_written_after_the_lod_are_read_raw_and_compaction_drops_it(raw_archive):
    a = Archive(raw_archive)
    a.curve(RUN, "loss", buckets=100)
    assert a.wait_background(120)
    built = a._lod_info(RUN)
    assert built is not None and RUN not in a.snapshot.lod

    # the live run goes on: attempt 1 writes steps 100,000..109,999 in new segments
    attempt_parts(raw_archive, 1, 100_000, 109_999, np.random.default_rng(12), seq0=10)
    assert a.refresh()
    assert a._lod_info(RUN) is built  # still valid: it covers older files, the new ones are its tail
    for lo, hi, buckets in cases(np.random.default_rng(3), 109_999):
        assert_same_curve(a.curve(RUN, "loss", buckets=buckets, lo=lo, hi=hi),
                          full_scan(a, "loss", lo=lo, hi=hi, buckets=buckets, rank=None))

    # compaction replaces the segments the reader's LOD covers: it must not be used again
    assert compact(raw_archive, RUN, grace_s=3600).lod_files == 1
    assert a.refresh()
    assert a._lod_info(RUN) is a.snapshot.lod[RUN]
    journey_rows = a.sql(f"SELECT count(*) AS n FROM journey_metrics WHERE run_id = '{RUN}' AND name = 'loss'")
    assert a.curve(RUN, "loss", buckets=50)["count"].sum() == journey_rows.to_pylist()[0]["n"]
    for lo, hi, buckets in cases(np.random.default_rng(4), 109_999):
        assert_same_curve(a.curve(RUN, "loss", buckets=buckets, lo=lo, hi=hi),
                          full_scan(a, "loss", lo=lo, hi=hi, buckets=buckets, rank=None))
    a.close()


def test_a_process_that_exits_during_a_build_exits_cleanly(raw_archive):
    script = ("import sys\nfrom telemetry.read import tail_lod\nfrom telemetry import Archive\n"
              "tail_lod.MIN_SCAN_S = 0.0\n"
              "a = Archive(sys.argv[1])\na.curve('lod-run', 'loss', buckets=10)\n"
              "assert a._tail_lods._thread.is_alive()\nprint('exiting during the build')\n")
    proc = subprocess.run([sys.executable, "-c", script, raw_archive], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting during the build" in proc.stdout
