"""What the journey page shows of one run, as data: its queries and its charts' Vega-Lite specs, cached per
archive version. The page (views/journey.py) draws them; the server's warm-up (warmup.py) computes the
default view of the newest run before the first visitor arrives, so that visit finds every query and
every chart ready (the same functions, the same arguments: the same cache keys).

No widgets here: a view is a plain `JourneyView` (what the page's controls picked).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.elements import vega_charts

from app.ui import chart_frames, chart_style, charts, state
from telemetry.read import series


@dataclass(frozen=True, slots=True)
class Run:
    """The page's header facts of a run: its runs() row, {attempt: (first, last step)} and its series."""

    info: pd.Series
    spans: dict[int, tuple[int, int]]
    names: list[str]
    points: pd.DataFrame
    curve_names: list[str]
    few_names: list[str]

    @property
    def first(self) -> int:
        return min(lo for lo, _ in self.spans.values())

    @property
    def last(self) -> int:
        return max(hi for _, hi in self.spans.values())

    @property
    def default_metrics(self) -> list[str]:
        return series.default_charts(self.curve_names)

    @property
    def lineage_metric(self) -> str:
        return series.loss_name(self.curve_names) or (self.curve_names or self.names)[0]


@dataclass(frozen=True, slots=True)
class JourneyView:
    """One view of the page: the run, the steps shown and the controls' choices (defaults: a first visit)."""

    run_id: str
    lo: int
    hi: int
    zoomed: bool = False
    x: str = "step"
    buckets: int = dataclasses.field(default_factory=chart_style.buckets_for_width)
    rank: int | None = None
    overlay: tuple[str, ...] = chart_style.OVERLAY_KINDS
    log: bool = False
    smoothing: int = 0
    line: str = "mean"

    def key(self) -> tuple:
        """The view as a cache key (plain values)."""
        return dataclasses.astuple(self)


@dataclass(frozen=True, slots=True)
class Chart:
    """One metric's chart of a view: its Vega-Lite spec (None: no points in the range) and non-finite counts."""

    spec: dict[str, Any] | None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0


def run_facts(archive: Any, run_id: str) -> Run:
    """The run's row (reads only its files), step spans (footers: no scan), metric names and point counts."""
    info = state.query(archive, "runs", run_id).set_index("run_id").loc[run_id]
    spans = state.step_spans(archive, run_id)
    if not spans:
        return Run(info, spans, [], pd.DataFrame(), [], [])
    names = state.query(archive, "metric_names", run_id)
    # one rule with the runs list and Compare (telemetry.read.series): losses first, whatever tool named them,
    # then grad norm, lr, throughput; series of a few points (sizes, final scores) go to a table, not charts
    points = state.metric_points(archive, run_id)
    counts = {r.name: (int(r.points), r.first_step, r.last_step) for r in points.itertuples()}
    curve_names, few_names = series.split_series(counts, names)
    return Run(info, spans, names, points, curve_names, few_names)


def first_view(run: Run, run_id: str) -> JourneyView:
    """The view a first visit opens: every step, on the step axis, the controls at their defaults."""
    return JourneyView(run_id, run.first, run.last)


def x_range(archive: Any, view: JourneyView) -> tuple[Any, Any]:
    """The zoom's bounds in the units of the x axis (None, None: the whole run)."""
    if not view.zoomed:
        return None, None
    x_lo, x_hi = state.x_bounds_for_steps(archive, view.run_id, view.x, view.lo, view.hi)
    if x_lo is None:
        return (view.lo, view.hi) if view.x == "step" else (None, None)
    return x_lo, x_hi


def events(archive: Any, view: JourneyView, names: list[str]) -> pd.DataFrame:
    """The events drawn on the charts (the overlay's kinds in the shown steps), placed on the x axis."""
    if not view.overlay:
        return pd.DataFrame()
    found = state.query(archive, "events", view.run_id, kinds=list(view.overlay), lo=view.lo, hi=view.hi)
    if found.empty:
        return found
    tokens_curve = state.query(archive, "curve", view.run_id, "tokens_seen", x="step", buckets=view.buckets) if (
        view.x == "tokens" and "tokens_seen" in names) else None
    return chart_frames.events_on_x(found, view.x, tokens_curve)


def curve(archive: Any, view: JourneyView, metric: str) -> pd.DataFrame:
    """One metric's min-max buckets over the view."""
    if view.x == "step":  # buckets of whole LOD blocks over the shown steps: served from the LOD alone (~20x faster)
        return state.query(archive, "curve", view.run_id, metric, x=view.x, buckets=view.buckets, lo=view.lo,
                           hi=view.hi, rank=view.rank, align=True)
    x_lo, x_hi = x_range(archive, view)
    return state.query(archive, "curve", view.run_id, metric, x=view.x, buckets=view.buckets, lo=x_lo, hi=x_hi,
                       rank=view.rank)


def chart(archive: Any, view: JourneyView, metric: str, names: list[str]) -> Chart:
    """The chart of `metric` in `view`, built and converted once per archive version (see vega_lite_spec)."""
    return _cached_chart(archive, archive.url, archive.version, view.key(), metric, tuple(names))


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_chart(_archive: Any, url: str, version: str, view_key: tuple, metric: str, names: tuple) -> Chart:
    del url, version  # the cache key, as in state._cached_call
    view = JourneyView(*view_key)
    data = curve(_archive, view, metric)
    if data.empty:
        return Chart(None)
    built = charts.envelope(data, metric=metric, x=view.x, log=view.log, smoothing=view.smoothing, line=view.line,
                            events=events(_archive, view, list(names)), brush="zoom" if view.x == "step" else None)
    return Chart(vega_lite_spec(built), *(int(data[c].sum()) for c in ("nan_count", "posinf_count", "neginf_count")))


def lineage(archive: Any, run_id: str) -> pd.DataFrame:
    """The attempts' lineage of a run of several attempts (attempt_lineage: steps, resumes, abandoned steps)."""
    return state.query(archive, "attempt_lineage", run_id)


def single_attempt(archive: Any, run_id: str) -> pd.DataFrame:
    """The one attempt of a run that was never restarted."""
    return state.sql_df(archive, "SELECT attempt, started_at, ended_at, end_status, seed, reason FROM attempts "
                                 "WHERE run_id = ? ORDER BY attempt", (run_id,))


# the attempts table's column titles (as the page's former st.dataframe column_config named them)
ATTEMPT_TITLES = {"first_step": "first step", "last_step": "last step", "resumed_from_step": "resumed from step",
                  "abandoned_steps": "abandoned steps", "started_at": "started (UTC)", "ended_at": "ended (UTC)"}
_MARKDOWN_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+-.!|$<>:~"})


def attempts_markdown(attempts: pd.DataFrame) -> str:
    """The attempts as a Markdown table: a handful of rows, drawn without the data grid, whose JavaScript
    (~1.4 MB of Streamlit's 4.9 MB) was the largest part of a first visit's browser work. Steps read 1,234,
    times YYYY-MM-DD HH:MM:SS (UTC), text is escaped (a restart's reason is the user's words), missing is empty."""
    def cell(value: Any, column: str) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, pd.Timestamp):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
            if float(value).is_integer():  # steps as 1,234; attempts and seeds as they are
                return f"{int(value):,}" if column.endswith(("step", "steps")) else str(int(value))
            return f"{float(value):.6g}"
        return " ".join(str(value).split()).translate(_MARKDOWN_SPECIALS)

    titles = [ATTEMPT_TITLES.get(c, c).translate(_MARKDOWN_SPECIALS) for c in attempts.columns]
    rows = ["| " + " | ".join(cell(v, c) for v, c in zip(row, attempts.columns, strict=True)) + " |"
            for row in attempts.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(titles) + " |", "|" + " --- |" * len(titles), *rows])


def lineage_chart(archive: Any, run_id: str, metric: str, log: bool) -> dict[str, Any]:
    """The attempts chart's Vega-Lite spec (one curve per attempt, abandoned branches dashed), cached."""
    return _cached_lineage_chart(archive, archive.url, archive.version, run_id, metric, log)


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_lineage_chart(_archive: Any, url: str, version: str, run_id: str, metric: str, log: bool) -> dict:
    del url, version
    per_attempt = state.attempt_curves(_archive, run_id, metric)
    return vega_lite_spec(charts.lineage_chart(per_attempt, lineage(_archive, run_id), metric=metric, log=log))


def vega_lite_spec(chart: Any) -> dict[str, Any]:
    """An Altair chart as the Vega-Lite spec st.altair_chart would send (datasets as Arrow bytes), for
    st.vega_lite_chart. Converting (altair's to_dict and its schema validation, Arrow serialization) is most of
    a chart's server time, so the page caches the result instead of converting on every run."""
    convert = getattr(vega_charts, "_convert_altair_to_vega_lite_spec", None)  # Streamlit's own, private
    if convert is None:  # another Streamlit: altair's dict with inline datasets, which vega_lite_chart also takes
        return chart.to_dict()
    return convert(chart)


def warm(archive: Any, run_id: str) -> int:
    """Compute the first visit of `run_id`'s journey (default view): every query and chart the page will ask
    for, into the page's caches. Returns the number of charts made ready."""
    run = run_facts(archive, run_id)
    if not run.spans:
        return 0
    view = first_view(run, run_id)
    events(archive, view, run.names)
    made = sum(chart(archive, view, metric, run.names).spec is not None for metric in run.default_metrics)
    if len(run.spans) > 1:
        lineage(archive, run_id)
        lineage_chart(archive, run_id, run.lineage_metric, view.log)
        made += 1
    else:
        single_attempt(archive, run_id)
    return made
