"""The journey page's first visit finds the server's warm-up work done (app/ui/warmup.py, journey_data.py):
the warm-up runs the queries and builds the chart specs of the run the sidebar opens on, with the page's own
cache keys, so the page itself reads nothing from the archive; and a cached spec draws exactly the chart
st.altair_chart would have drawn."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app.ui import journey_data, state, warmup
from telemetry import Writer

BASELINE_RUN, DEMO_RUN = "baseline", "llm-demo"  # runs of the fixture archive (conftest.py)

# the Archive calls behind every query the journey page makes (queries.py's helpers go through `sql`)
READS = ("runs", "attempt_spans", "metric_names", "events", "curve", "attempt_lineage", "sql")
MAIN = Path(__file__).resolve().parents[2] / "app" / "ui" / "main.py"


@pytest.fixture
def counted_archive(fixture_archive, monkeypatch):
    """The app's Archive for the fixture (the one the page's sidebar gets), every read and every chart spec
    built counted; the caches empty."""
    st.cache_data.clear()
    archive = state.get_archive(fixture_archive)
    reads: Counter[str] = Counter()
    for name in READS:
        method = getattr(archive, name)

        def counting(*args, _name=name, _method=method, **kwargs):
            reads[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(archive, name, counting)
    convert = journey_data.vega_lite_spec

    def converting(chart):
        reads["chart spec"] += 1  # a chart built and converted: the costly part of a chart's server time
        return convert(chart)

    monkeypatch.setattr(journey_data, "vega_lite_spec", converting)
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", fixture_archive)
    yield archive, reads
    st.cache_data.clear()


def journey(run: str | None = None) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params["page"] = "journey"
    if run:
        at.query_params["run"] = run
    return at.run()


def test_the_sidebar_opens_on_the_newest_run_that_has_points():
    runs = pd.DataFrame({"run_id": ["empty", "newer", "older"], "steps": [None, 10, 20]})
    assert state.default_run(runs) == "newer"
    assert state.default_run(runs.iloc[:1]) == "empty", "no run has points: the newest run"
    assert state.default_run(runs.iloc[:0]) is None


def test_a_first_visit_after_the_warm_up_reads_nothing_from_the_archive(counted_archive):
    archive, reads = counted_archive
    assert warmup.warm_pages(archive) == "ready"
    assert reads["curve"] >= 4 and reads["chart spec"] >= 4, "the warm-up drew the default charts"
    reads.clear()
    at = journey()  # no ?run=: the sidebar's default run, the one the warm-up chose
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == f"Journey of {BASELINE_RUN}"
    assert len(at.get("vega_lite_chart")) >= 4
    assert sum(reads.values()) == 0, f"the page computed what the warm-up should have cached: {dict(reads)}"


def test_the_warm_up_covers_the_attempts_chart_of_a_restarted_run(counted_archive):
    archive, reads = counted_archive
    assert warmup.warm_pages(archive, DEMO_RUN) == "ready"
    assert journey_data.warm(archive, DEMO_RUN) == 5, "4 metric charts and the attempts chart"
    reads.clear()
    at = journey(DEMO_RUN)
    assert not at.exception, [e.value for e in at.exception]
    assert "per attempt" in at.get("vega_lite_chart")[-1].proto.spec
    assert sum(reads.values()) == 0, dict(reads)


def test_without_the_warm_up_the_first_visit_does_the_queries(counted_archive):
    archive, reads = counted_archive  # the control of the two tests above: the counting sees the page's reads
    at = journey(DEMO_RUN)
    assert not at.exception
    assert reads["curve"] >= 4 and reads["chart spec"] >= 5 and reads["runs"] >= 1


def test_the_warm_up_of_an_archive_whose_run_has_no_points_yet_is_ready_at_once(tmp_path):
    Writer(str(tmp_path), "only-run").close()
    archive = state.get_archive(str(tmp_path))
    assert warmup.warm_pages(archive) == "ready"


def _chart_script() -> None:
    import pandas as pd
    import streamlit as st

    from app.ui import charts, journey_data

    curve = pd.DataFrame({"x_lo": [0, 10, 20], "x_hi": [9, 19, 29], "min": [1.0, 0.5, float("nan")],
                          "max": [3.0, 2.0, 1.0], "mean": [2.0, 1.0, 0.5], "last": [2.0, 1.0, 0.5],
                          "count": [10, 10, 10], "nan_count": [0, 0, 1], "posinf_count": [0, 0, 0],
                          "neginf_count": [0, 0, 0]})
    chart = charts.envelope(curve, metric="loss", brush="zoom")
    st.altair_chart(chart, width="stretch", key="a", on_select="rerun", selection_mode="zoom")
    st.vega_lite_chart(spec=journey_data.vega_lite_spec(chart), width="stretch", key="b", on_select="rerun",
                       selection_mode="zoom")


def test_a_cached_spec_draws_the_chart_st_altair_chart_draws():
    at = AppTest.from_function(_chart_script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    altair_chart, cached = (el.proto for el in at.get("vega_lite_chart"))
    assert json.loads(cached.spec) == json.loads(altair_chart.spec)
    assert [(d.name, d.data.data) for d in cached.datasets] == [(d.name, d.data.data) for d in altair_chart.datasets]
    assert list(cached.selection_mode) == list(altair_chart.selection_mode) == ["zoom"]


def test_a_chart_of_a_view_without_points_has_no_spec(counted_archive):
    archive, _ = counted_archive
    view = journey_data.JourneyView(DEMO_RUN, 0, 499)
    drawn = journey_data.chart(archive, view, "no-such-metric", [])
    assert drawn.spec is None and (drawn.nan, drawn.posinf, drawn.neginf) == (0, 0, 0)
    loss = journey_data.chart(archive, view, "loss", [])
    assert loss.spec is not None and loss.nan >= 1 and loss.posinf >= 1
