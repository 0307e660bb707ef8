"""telemetry.read.queries: the app's shared queries over a real archive, without Streamlit."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from telemetry import Archive, Writer
from telemetry.read import queries

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture()
def url(tmp_path) -> str:
    """Run "r": attempt 0 logs steps 0..9, attempt 1 resumes at step 5 and logs 5..14; two ranks log
    step_time_s (rank 1 slower); NaN, +Inf and -Inf in attempt 0's loss; GPU samples on both ranks."""
    url = str(tmp_path / "archive")
    with Writer(url, run="r", attempt=0) as w:
        for step in range(10):
            w.metric(step, "loss", float(step), wall_time=at(step))
        w.metric(2, "loss", math.nan, wall_time=at(2))
        w.metric(3, "loss", math.inf, wall_time=at(3))
        w.metric(4, "loss", -math.inf, wall_time=at(4))
    with Writer(url, run="r", attempt=1) as w:
        for step in range(5, 15):
            w.metric(step, "loss", 100.0 + step, wall_time=at(100 + step))
    for rank, seconds in ((0, 1.0), (1, 2.0)):
        with Writer(url, run="r", attempt=1, rank=rank) as w:
            for step in range(5, 15):
                w.metric(step, "step_time_s", seconds, wall_time=at(100 + step))
            w.metric(14, "step_time_s", math.nan, wall_time=at(115))
            for t in range(4):
                w.system("gpu.util", 50.0 + rank * 10 + t, gpu_index=rank, gpu_uuid=f"GPU-{rank}", wall_time=at(t))
            w.system("gpu.util", math.inf, gpu_index=rank, gpu_uuid=f"GPU-{rank}", wall_time=at(2))
    return url


def test_attempt_curves_count_nonfinite_values_like_curves_do(url):
    with Archive(url) as a:
        per_attempt = queries.attempt_curves(a, "r", "loss", buckets=1000)
        first = per_attempt[per_attempt["attempt"] == 0]
        assert list(first.columns) == queries.ATTEMPT_CURVE_COLUMNS
        assert (int(first["nan_count"].sum()), int(first["posinf_count"].sum()),
                int(first["neginf_count"].sum())) == (1, 1, 1)
        # min/max/mean over finite values only, as Archive.curve
        assert first["min"].min() == 0.0 and first["max"].max() == 9.0
        # the same rule as Archive.curve over the same rows (attempt 0 alone is not the journey: compare totals)
        curve = a.curve("r", "loss", journey=False, buckets=1000)
        assert int(curve["nan_count"].sum()) == int(per_attempt["nan_count"].sum())
        assert int(curve["posinf_count"].sum()) == int(per_attempt["posinf_count"].sum())
        assert int(curve["count"].sum()) == int(per_attempt["count"].sum())


def test_attempt_curves_share_one_step_grid(url):
    with Archive(url) as a:
        per_attempt = queries.attempt_curves(a, "r", "loss", buckets=15)
    # 15 buckets over steps 0..14: one step per bucket, the same bucket for the same step in both attempts
    assert (per_attempt["bucket"] == per_attempt["x_lo"]).all()
    assert sorted(per_attempt.loc[per_attempt["attempt"] == 1, "bucket"]) == list(range(5, 15))


def test_attempt_curves_of_an_unknown_metric_are_empty_with_the_columns(url):
    with Archive(url) as a:
        empty = queries.attempt_curves(a, "r", "no such metric")
    assert empty.empty and list(empty.columns) == queries.ATTEMPT_CURVE_COLUMNS


def test_step_time_heatmap_has_a_row_per_rank_and_bucket_over_finite_values(url):
    with Archive(url) as a:
        heat = queries.step_time_heatmap(a, "r", buckets=5)
    assert set(heat["rank"]) == {0, 1}
    assert sorted(heat["bucket"].unique()) == [0, 1, 2, 3, 4]
    assert set(heat.loc[heat["rank"] == 1, "value"]) == {2.0}  # the NaN is left out of the mean


def test_rank_step_times_and_system_queries(url):
    with Archive(url) as a:
        times = queries.rank_step_times(a, "r")
        assert list(times["median_step_time_s"]) == [1.0, 2.0]
        assert list(times["steps"]) == [10, 10]
        assert queries.system_names(a, "r") == ["gpu.util"]
        heat = queries.system_heatmap(a, "r", "gpu.util", buckets=4)
        assert set(heat["rank"]) == {0, 1}
        assert heat["value"].map(math.isfinite).all()  # +Inf is left out of the mean
        summary = queries.system_summary(a, "r")
        assert list(summary["rank"]) == [0, 1]
        empty = queries.system_heatmap(a, "r", "gpu.power_w")
        assert empty.empty and list(empty.columns) == ["rank", "gpu_index", "bucket", "t_lo", "t_hi", "value"]


def test_x_bounds_for_steps_in_time_units(url):
    with Archive(url) as a:
        assert queries.x_bounds_for_steps(a, "r", "step", 3, 7) == (3, 7)
        lo, hi = queries.x_bounds_for_steps(a, "r", "time", 5, 6)
        assert lo.to_pydatetime() == at(105) and hi.to_pydatetime() == at(106)
        assert queries.x_bounds_for_steps(a, "r", "tokens", 5, 6) == (None, None)  # no tokens_seen logged
