"""Level-of-detail curves: exactly a full scan's buckets, read mostly from the LOD table."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from data_schema import schema, segment_path
from telemetry import Archive
from telemetry.maintain.compaction import CompactionConfig, compact
from telemetry.read import curves, lod
from telemetry.store.encodings import segment_bytes
from telemetry.store.fs import ensure_root_file, open_fs

RUN = "lod-run"
WIDTHS = (4, 16, 64)
EXACT = ["bucket", "x_lo", "x_hi", "min", "max", "first", "last", "count", "nan_count", "posinf_count", "neginf_count"]


def write_part(root: str, attempt: int, rank: int, seq: int, steps: np.ndarray, rng: np.random.Generator) -> None:
    """One segment: 'loss' and 'grad_norm' at `steps`, with spikes, NaN and ±Inf."""
    n = len(steps)
    rows = []
    for name in ("loss", "grad_norm"):
        v = 3.0 + rng.normal(0, 0.1, n)
        kind = rng.random(n)
        v[kind < 0.01] = np.nan
        v[(kind >= 0.01) & (kind < 0.015)] = np.inf
        v[(kind >= 0.015) & (kind < 0.02)] = -np.inf
        v[(kind >= 0.02) & (kind < 0.03)] *= 100  # spikes
        rows.append(pa.table({
            "run_id": pa.array([RUN] * n), "attempt": pa.array(np.full(n, attempt, np.int32)),
            "rank": pa.array(np.full(n, rank, np.int32)), "step": pa.array(steps.astype(np.int64)),
            "name": pa.array([name] * n), "value": pa.array(v),
            "wall_time": pa.array(1_700_000_000_000_000 + steps * 1000).cast(schema("metrics").field("wall_time").type),
        }, schema=schema("metrics")))
    path = os.path.join(root, segment_path("metrics", RUN, attempt, rank, seq))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(segment_bytes(pa.concat_tables(rows)).to_pybytes())


def attempt_parts(root: str, attempt: int, lo: int, hi: int, rng: np.random.Generator, seq0: int = 1) -> None:
    """Steps lo..hi of one attempt: rank 0 logs even steps, rank 1 odd ones, in 3 segments each."""
    for rank in (0, 1):
        steps = np.arange(lo + ((rank - lo) % 2), hi + 1, 2)
        for i, chunk in enumerate(np.array_split(steps, 3)):
            write_part(root, attempt, rank, seq0 + i, chunk, rng)


@pytest.fixture(scope="module")
def lod_archive(tmp_path_factory) -> str:
    """Attempts 0 (0..2999) and 1 (2500..5999) compacted with an LOD; then, uncompacted, attempt 1
    goes on to 6999 and attempt 2 resumes at 6500: a tail the LOD does not cover, and a new span."""
    root = str(tmp_path_factory.mktemp("lod") / "archive")
    ensure_root_file(*open_fs(root))
    rng = np.random.default_rng(7)
    attempt_parts(root, 0, 0, 2999, rng)
    attempt_parts(root, 1, 2500, 5999, rng)
    report = compact(root, RUN, grace_s=3600, config=CompactionConfig(lod_widths=WIDTHS))
    assert report.lod_files == 1 and not report.problems
    attempt_parts(root, 1, 6000, 6999, rng, seq0=10)
    attempt_parts(root, 2, 6500, 7499, rng)
    return root


def full_scan(a: Archive, name: str, *, lo: int | None, hi: int | None, buckets: int, rank: int | None) -> pd.DataFrame:
    """The curve by the definition: bucket the journey rows (journey_metrics view) straight from raw rows."""
    where = [f"run_id = {curves.quote_str(RUN)}", f"name = {curves.quote_str(name)}"]
    if rank is not None:
        where.append(f"rank = {rank}")
    points = curves.points_sql("journey_metrics", x="step", where=where)
    if lo is None or hi is None:
        r = a.sql(curves.range_sql(points, x="step")).to_pylist()[0]
        lo = r["lo"] if lo is None else lo
        hi = r["hi"] if hi is None else hi
    return a.sql(curves.curve_sql(points, x="step", lo=lo, hi=hi, buckets=buckets)).to_pandas()


def assert_same_curve(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    got, want = got.reset_index(drop=True), want.reset_index(drop=True)
    for col in EXACT:
        pd.testing.assert_series_equal(got[col], want[col], check_dtype=False, check_names=False, obj=col)
    np.testing.assert_allclose(got["mean"].to_numpy(float), want["mean"].to_numpy(float), rtol=1e-9)


def test_lod_curve_equals_a_full_scan_over_many_windows_and_bucket_counts(lod_archive, monkeypatch):
    used, cuts = [], set()
    real_sql, real_plan = lod.curve_sql, lod.plan_curve
    monkeypatch.setattr(lod, "curve_sql", lambda **kw: used.append(kw) or real_sql(**kw))
    monkeypatch.setattr(lod, "plan_curve", lambda **kw: cuts.add(kw["cut"]) or real_plan(**kw))
    a = Archive(lod_archive)
    assert RUN in a.snapshot.lod, "the compacted run must have a level-of-detail table"
    rng = np.random.default_rng(1)
    cases = [(None, None, b) for b in (1, 7, 50, 333, 2000)]
    for _ in range(40):
        lo = int(rng.integers(0, 7500))
        cases.append((lo, int(rng.integers(lo, 7600)), int(rng.choice([1, 2, 3, 10, 37, 100, 999]))))
    for lo, hi, buckets in cases:
        for name in ("loss", "grad_norm"):
            got = a.curve(RUN, name, buckets=buckets, lo=lo, hi=hi)
            assert_same_curve(got, full_scan(a, name, lo=lo, hi=hi, buckets=buckets, rank=None))
    # attempt 1 went on past 5999 after the LOD was built: from step 6000 on the LOD is stale
    served = sum(1 for lo, _, _ in cases if lo is None or lo < 6000)
    assert len(used) == 2 * served, "every step curve the LOD can serve must go through it"
    assert cuts == {6000}, "the changed spans must cut the LOD's validity"


def test_per_rank_lod_curve_equals_a_full_scan(lod_archive):
    a = Archive(lod_archive)
    for rank in (0, 1):
        for lo, hi, buckets in ((None, None, 100), (100, 6600, 13), (3, 90, 5)):
            got = a.curve(RUN, "loss", buckets=buckets, lo=lo, hi=hi, rank=rank)
            assert_same_curve(got, full_scan(a, "loss", lo=lo, hi=hi, buckets=buckets, rank=rank))


def test_lod_keeps_a_single_spike_nan_and_infinities_visible(lod_archive):
    a = Archive(lod_archive)
    c = a.curve(RUN, "loss", buckets=3)
    raw = a.sql(f"SELECT value FROM journey_metrics WHERE run_id = '{RUN}' AND name = 'loss'").column(0).to_numpy()
    assert c["max"].max() == np.nanmax(raw[np.isfinite(raw)])
    assert c["nan_count"].sum() == np.isnan(raw).sum()
    assert c["posinf_count"].sum() == np.isposinf(raw).sum() and c["neginf_count"].sum() == np.isneginf(raw).sum()
    assert c["count"].sum() == len(raw)


def test_metrics_lod_view_answers_sql(lod_archive):
    a = Archive(lod_archive)
    rows = a.sql(f"SELECT width, sum(count) AS n FROM metrics_lod WHERE run_id = '{RUN}' AND rank = -1 "
                 "AND name = 'loss' GROUP BY width ORDER BY width").to_pylist()
    assert [r["width"] for r in rows] == list(WIDTHS)
    assert len({r["n"] for r in rows}) == 1  # every level holds every covered point once
    from telemetry.read.sandbox import SandboxedQuery

    assert SandboxedQuery(a).run("SELECT count(*) AS n FROM metrics_lod").to_pylist()[0]["n"] > 0


def test_time_curves_and_non_journey_curves_still_read_raw_rows(lod_archive):
    a = Archive(lod_archive)
    n = f"SELECT count(*) AS n FROM {{}} WHERE run_id = '{RUN}' AND name = 'loss'"
    total = a.sql(n.format("metrics")).to_pylist()[0]["n"]
    journey = a.sql(n.format("journey_metrics")).to_pylist()[0]["n"]
    assert journey < total
    assert a.curve(RUN, "loss", buckets=5, journey=False)["count"].sum() == total
    assert a.curve(RUN, "loss", x="time", buckets=4)["count"].sum() == journey


@pytest.mark.parametrize("lo,hi,buckets,cut", [(0, 99_999, 2000, float("inf")), (17, 50_000, 7, 40_000.0),
                                               (5, 70, 3, float("inf")), (1000, 1000 + 65_536, 999, 30_000.0)])
def test_curve_plan_counts_every_step_once_and_never_splits_a_block_across_buckets(lo, hi, buckets, cut):
    widths = (64, 512, 4096, 32768)
    plan = lod.plan_curve(lo=lo, hi=hi, buckets=buckets, cut=cut, widths=widths)
    if plan is None:
        assert min(hi, cut - 1) - max(lo, 0) < 2 * widths[0]
        return
    seen = np.zeros(hi - lo + 1, np.int64)
    for w, k, b in zip(*(plan.blocks[c].to_numpy() for c in ("width", "bucket", "b")), strict=True):
        steps = np.arange(k * w, (k + 1) * w)
        assert set(((steps - lo) * buckets) // (hi - lo + 1)) == {b}
        assert steps[-1] < cut
        seen[steps - lo] += 1
    seen[plan.edges["step"].to_numpy() - lo] += 1
    seen[: plan.full_lo - lo] += 1
    seen[plan.full_hi + 1 - lo:] += 1
    assert (seen == 1).all()
    assert plan.edges.num_rows <= buckets * widths[0]


def test_default_lod_widths_give_the_full_scan_curve(tmp_path):
    root = str(tmp_path / "archive")
    ensure_root_file(*open_fs(root))
    rng = np.random.default_rng(3)
    attempt_parts(root, 0, 0, 119_999, rng)
    attempt_parts(root, 1, 100_000, 199_999, rng)
    assert compact(root, RUN, grace_s=3600).lod_files == 1
    a = Archive(root)
    assert a.snapshot.lod[RUN].widths == (64, 512, 4096, 32768)
    for lo, hi, buckets in ((None, None, 2000), (None, None, 10), (12_345, 187_654, 333), (0, 70_000, 100)):
        assert_same_curve(a.curve(RUN, "loss", buckets=buckets, lo=lo, hi=hi),
                          full_scan(a, "loss", lo=lo, hi=hi, buckets=buckets, rank=None))


@pytest.mark.parametrize(("lo", "hi", "buckets", "block"), [(0, 999_999, 600, 64), (5, 17, 4, 4), (130, 7999, 600, 4),
                                                            (0, 0, 1, 64), (3, 3, 10, 4), (100, 5000, 1, 16)])
def test_an_aligned_window_covers_the_asked_one_in_whole_blocks_per_bucket(lo, hi, buckets, block):
    a_lo, a_hi, n = lod.aligned_window(lo, hi, buckets, block)
    width = (a_hi - a_lo + 1) // n
    assert a_lo <= lo and a_hi >= hi and 1 <= n <= buckets
    assert a_lo % block == 0 and width % block == 0 and width * n == a_hi - a_lo + 1
    assert a_hi - hi < width and lo - a_lo < block, "at most one bucket more than asked"


def test_aligned_curves_read_no_raw_rows_of_covered_files_and_equal_a_full_scan(lod_archive, monkeypatch):
    plans = []
    real_plan = lod.plan_curve
    monkeypatch.setattr(lod, "plan_curve", lambda **kw: plans.append(real_plan(**kw)) or plans[-1])
    a = Archive(lod_archive)
    for lo, hi, buckets in ((0, 5999, 100), (37, 4100, 13), (0, 7499, 600), (1000, 1003, 5)):
        wide = hi - lo + 1 >= buckets * WIDTHS[0]  # a narrower window (a zoom) keeps its own resolution
        a_lo, a_hi, n = lod.aligned_window(lo, hi, buckets, WIDTHS[0]) if wide else (lo, hi, buckets)
        for name in ("loss", "grad_norm"):
            got = a.curve(RUN, name, buckets=buckets, lo=lo, hi=hi, align=True)
            assert_same_curve(got, full_scan(a, name, lo=a_lo, hi=a_hi, buckets=n, rank=None))
            if wide and a_hi < 6000:  # widened, inside what the LOD covers and validates: no straddling block
                assert plans[-1] is not None and plans[-1].edges.num_rows == 0


def test_an_aligned_zoom_narrower_than_its_buckets_in_blocks_keeps_one_bucket_per_step(lod_archive):
    # The journey asks for aligned windows; a zoom of 31 steps must not collapse into one LOD block's bucket.
    a = Archive(lod_archive)
    got = a.curve(RUN, "loss", buckets=320, lo=140, hi=170, align=True)
    assert (got["x_lo"].min(), got["x_hi"].max(), len(got)) == (140, 170, 31)
    assert_same_curve(got, full_scan(a, "loss", lo=140, hi=170, buckets=320, rank=None))
    a.close()
