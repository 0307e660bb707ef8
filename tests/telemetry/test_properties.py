"""Properties over generated data (hypothesis): whatever a trainer logs comes back exactly, and
every curve equals a brute-force numpy reference over the raw rows, before and after compaction."""

from __future__ import annotations

import math
import struct
import tempfile
from collections import Counter

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry import Archive, Writer, WriterConfig
from telemetry.maintain.compaction import CompactionConfig, compact

RUN = "prop"
FAST = WriterConfig(flush_interval_s=0.05, segment_interval_s=3600, close_timeout_s=20)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# every kind of double the format must keep: NaN, ±Inf, -0.0, subnormals, the extremes
special = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324, 2.2250738585072014e-308,
                           1.7976931348623157e308, -1.7976931348623157e308])
values = st.one_of(special, st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e6, 1e6))
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
steps = st.integers(-20, 400)
records = st.lists(st.tuples(st.integers(0, 1), steps, st.sampled_from(["loss", "grad_norm"]) | names, values),
                   min_size=1, max_size=120)
events = st.lists(st.tuples(steps, st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)), max_size=8)


def bits(v: float) -> bytes:
    """Exact identity of a double, except that every NaN is the same NaN."""
    return b"nan" if math.isnan(v) else struct.pack("<d", v)


def write(url: str, recs: list, evs: list = ()) -> None:
    for rank in sorted({r for r, *_ in recs}):
        with Writer(url, run=RUN, rank=rank, attempt=0, world_size=2, writer_config=FAST) as w:
            for r, step, name, value in recs:
                if r == rank:
                    w.metric(step, name, value, wall_time=1_700_000_000.0 + step)
            if rank == min(r for r, *_ in recs):
                for step, message in evs:
                    w.event("note", step=step, message=message)


@SETTINGS
@given(recs=records, evs=events)
def test_any_records_round_trip_exactly(recs, evs):
    with tempfile.TemporaryDirectory(prefix="flightlog-prop-") as tmp:
        url = tmp + "/archive"
        write(url, recs, evs)
        check_round_trip(url, recs, evs)


def check_round_trip(url: str, recs: list, evs: list) -> None:
    with Archive(url) as a:
        got = a.metrics(RUN, journey=False)
        back = Counter((int(r), int(s), n, bits(float(v))) for r, s, n, v in
                       zip(got["rank"], got["step"], got["name"], got["value"], strict=True))
        assert back == Counter((r, s, n, bits(v)) for r, s, n, v in recs)
        micros = (got["wall_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        assert (micros == (1_700_000_000 + got["step"]) * 1_000_000).all()
        ev = a.events(RUN, kinds="note")
        assert Counter(zip(ev["step"].astype(int), ev["message"], strict=True)) == Counter(evs)


def reference_curve(recs: list, name: str, rank: int | None, buckets: int, lo: int | None, hi: int | None) -> dict:
    """{bucket: stats} by brute force: curves.bucket_expression's bucketing over the raw rows."""
    rows = [(s, v) for r, s, n, v in recs if n == name and (rank is None or r == rank)]
    if not rows:
        return {}
    step = np.array([s for s, _ in rows], dtype=np.int64)
    val = np.array([v for _, v in rows], dtype=np.float64)
    lo = int(step.min()) if lo is None else lo
    hi = int(step.max()) if hi is None else hi
    if hi < lo:
        return {}
    keep = (step >= lo) & (step <= hi)
    step, val = step[keep], val[keep]
    bucket = ((step - lo) * buckets) // (hi - lo + 1)
    out = {}
    for b in np.unique(bucket):
        s, v = step[bucket == b], val[bucket == b]
        fin = v[np.isfinite(v)]
        out[int(b)] = {
            "x_lo": int(s.min()), "x_hi": int(s.max()), "count": len(v),
            "nan_count": int(np.isnan(v).sum()), "posinf_count": int((v == np.inf).sum()),
            "neginf_count": int((v == -np.inf).sum()),
            "min": fin.min() if len(fin) else None, "max": fin.max() if len(fin) else None,
            "sum": exact_sum(fin) if len(fin) else None, "n_finite": len(fin),
            "abs": float(np.abs(fin).max()) if len(fin) else 0.0,
            "first": {bits(x) for x in v[s == s.min()]}, "last": {bits(x) for x in v[s == s.max()]},
        }
    return out


def exact_sum(values) -> float:
    """The exact sum, or inf where it overflows (fsum raises there; the mean check then stands aside)."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.inf


def assert_curve_matches(curve, ref: dict) -> None:
    assert sorted(int(b) for b in curve["bucket"]) == sorted(ref)
    for row in curve.to_dict("records"):
        want = ref[int(row["bucket"])]
        for key in ("x_lo", "x_hi", "count", "nan_count", "posinf_count", "neginf_count"):
            assert int(row[key]) == want[key], (key, row, want)
        for key in ("min", "max"):
            assert (want[key] is None and (row[key] is None or math.isnan(row[key]))) or bits(row[key]) == bits(
                want[key]) or row[key] == want[key], (key, row, want)  # -0.0 == 0.0 for min/max ties
        assert bits(row["first"]) in want["first"] and bits(row["last"]) in want["last"], (row, want)
        if want["n_finite"] == 0:
            assert row["mean"] is None or math.isnan(row["mean"])
        elif math.isfinite(want["sum"]) and want["abs"] * want["n_finite"] < 1e300:
            # any summation order is within n·ε·max|x| of the exact sum
            tol = 4 * want["n_finite"] * 2.3e-16 * want["abs"] + 1e-300
            assert abs(row["mean"] - want["sum"] / want["n_finite"]) <= tol, (row, want)


curve_queries = st.lists(st.tuples(st.integers(1, 40), st.one_of(st.none(), st.integers(-30, 420)),
                                   st.one_of(st.none(), st.integers(-30, 420)), st.sampled_from([None, 0, 1])),
                         min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, queries=curve_queries)
def test_any_curve_equals_a_brute_force_reference_before_and_after_compaction(recs, queries):
    with tempfile.TemporaryDirectory(prefix="flightlog-prop-") as tmp:
        url = tmp + "/archive"
        write(url, recs)
        check_curves(url, recs, queries)


def check_curves(url: str, recs: list, queries: list) -> None:
    name = recs[0][2]
    for phase in ("segments", "compacted"):
        if phase == "compacted":
            report = compact(url, RUN, config=CompactionConfig(lod_widths=(2, 8, 32)))
            assert not report.problems, report.problems
        with Archive(url) as a:
            if phase == "compacted":
                assert any(f.key.kind == "compact" for f in a.snapshot.files["metrics"])
            for buckets, lo, hi, rank in queries:
                curve = a.curve(RUN, name, buckets=buckets, lo=lo, hi=hi, rank=rank)
                assert_curve_matches(curve, reference_curve(recs, name, rank, buckets, lo, hi))


def test_nan_counts_survive_parquet_statistics_on_every_query_path(tmp_path):
    """Six NaN and one -0.0 in one file: its min/max statistics say [-0.0, 0.0]. DuckDB must not
    fold isnan(value) to false from them on any cursor (curve, SQL, sandbox)."""
    url = str(tmp_path / "archive")
    write(url, [(0, 0, "loss", math.nan)] * 6 + [(0, 0, "loss", -0.0)])
    with Archive(url) as a:
        assert int(a.curve(RUN, "loss", buckets=1)["nan_count"].iloc[0]) == 6
        assert a.sql("SELECT count_if(isnan(value)) AS n FROM metrics").to_pylist() == [{"n": 6}]
        from telemetry.read.sandbox import SandboxedQuery
        sandbox = SandboxedQuery(a)
        try:
            assert sandbox.run("SELECT count_if(isnan(value)) AS n FROM metrics").to_pylist() == [{"n": 6}]
        finally:
            sandbox.close()
