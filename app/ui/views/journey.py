"""Journey of one run: loss, grad norm, lr and throughput as min-max bands with NaN/Inf markers,
incidents overlaid, zoom that re-queries at full resolution, and the attempts' lineage."""

from __future__ import annotations

import functools

import pandas as pd
import streamlit as st

from app.ui import chart_frames, chart_style, charts, state
from telemetry.read import series

picked = state.require_run()
if picked is None:
    st.title("Journey")
    st.stop()
archive, run_id = picked
runs = state.query(archive, "runs", run_id).set_index("run_id")  # this run's row: reads only its files
info = runs.loc[run_id]
name = info["name"] if isinstance(info["name"], str) else run_id
st.title(f"Journey of {name}")

spans = state.step_spans(archive, run_id)  # {attempt: (first, last)} from file footers: no scan
st.caption(" · ".join([
    f"**{info['status']}**", f"{chart_style.fmt_count(info['steps'])} steps",
    f"{chart_style.fmt_count(info['tokens'])} tokens",
    f"{int(info['attempts'])} attempt(s)", f"{int(info['ranks'])} rank(s)", f"{int(info['incidents'])} incident(s)",
    f"run id `{run_id}`"]))
if not spans:
    st.info("This run has no metrics yet. If it is training now, its first segment appears after the writer's "
            "segment interval (60 s by default); press *Re-scan the archive* in the sidebar.")
    st.stop()

first, last = min(lo for lo, _ in spans.values()), max(hi for _, hi in spans.values())
names = state.query(archive, "metric_names", run_id)

# -- controls ---------------------------------------------------------------------------------
params = state.zoom_from_params()
for problem in params.problems:
    st.warning(problem)
if st.session_state.get("_zoom_run") != run_id:
    st.session_state["_zoom_run"] = run_id
    lo0, hi0 = state.clamp_range(params.lo, params.hi, first, last)
    st.session_state["zoom_lo"], st.session_state["zoom_hi"] = lo0, hi0


def _reset_zoom() -> None:
    st.session_state["zoom_lo"], st.session_state["zoom_hi"] = first, last


def _zoom_to_brush(chart_key: str) -> None:
    """A range dragged on a step chart becomes the zoom (re-queried at full resolution)."""
    picked = state.brushed_range(st.session_state.get(chart_key), "zoom")
    if picked is not None:
        st.session_state["zoom_lo"], st.session_state["zoom_hi"] = state.clamp_range(*picked, first, last)


# one rule with the runs list and Compare (telemetry.read.series): losses first, whatever tool named them, then
# grad norm, lr, throughput; series of a few points (sizes, final scores) go to a table, not near-empty charts
points = state.metric_points(archive, run_id)
counts = {r.name: (int(r.points), r.first_step, r.last_step) for r in points.itertuples()}
curve_names, few_names = series.split_series(counts, names)
default_metrics = series.default_charts(curve_names)
c1, c2, c3, c4, c5, c6 = st.columns([2.2, 1.6, 1.6, 0.8, 1, 2], vertical_alignment="bottom")
x = c1.segmented_control("x axis", ["step", "tokens", "time"], default="step", key="journey_x",
                         help="step, tokens seen, or wall time (UTC)") or "step"
lo = c2.number_input("From step", min_value=first, max_value=last, step=1, key="zoom_lo")
hi = c3.number_input("To step", min_value=first, max_value=last, step=1, key="zoom_hi")
c4.button("Reset", on_click=_reset_zoom, help=f"show all steps ({first:,}–{last:,})", key="zoom_reset")
log = c5.toggle("Log y", key="journey_log")
smoothing = c6.slider("Smoothing", 0, 50, 0, key="journey_smooth",
                      help="EMA over this many buckets, of the line only: the min-max band stays raw")
with st.expander("Metrics, line, ranks and events"):
    e1, e2, e3 = st.columns([4, 1, 1])
    shown = e1.multiselect("Metrics", curve_names, default=default_metrics, key="journey_metrics",
                           format_func=chart_style.metric_title)
    line = e2.segmented_control("Line", ["mean", "last"], default="mean", key="journey_line",
                                help="the band is always the bucket's min-max; the line its mean or last value"
                                ) or "mean"
    rank_options = ["all ranks"] + [f"rank {r}" for r in range(int(info["ranks"] or 1))]
    rank_label = e3.selectbox("Ranks", rank_options, key="journey_rank",
                              help="all ranks: each bucket spans every rank's values")
    overlay = st.multiselect("Events on the charts", list(chart_style.OVERLAY_KINDS),
                             default=list(chart_style.OVERLAY_KINDS), key="journey_events")
lo, hi = (int(lo), int(hi)) if lo <= hi else (int(hi), int(lo))
zoomed = (lo, hi) != (first, last)
if zoomed:
    st.query_params["lo"], st.query_params["hi"] = str(lo), str(hi)
else:
    st.query_params.pop("lo", None)
    st.query_params.pop("hi", None)
rank = None if rank_label == "all ranks" else int(rank_label.split()[1])
buckets = chart_style.buckets_for_width()  # about one bucket per 1.5 px of a half-width chart

# -- curves -----------------------------------------------------------------------------------
if zoomed:
    x_lo, x_hi = state.x_bounds_for_steps(archive, run_id, x, lo, hi)
    if x_lo is None:
        x_lo, x_hi = (lo, hi) if x == "step" else (None, None)
else:
    x_lo = x_hi = None
events = state.query(archive, "events", run_id, kinds=overlay, lo=lo, hi=hi) if overlay else pd.DataFrame()
tokens_curve = state.query(archive, "curve", run_id, "tokens_seen", x="step", buckets=buckets) if (
    x == "tokens" and "tokens_seen" in names) else None
events = chart_frames.events_on_x(events, x, tokens_curve) if not events.empty else events
if x == "tokens" and "tokens_seen" not in names:
    st.warning("This run logged no `tokens_seen`: showing nothing against tokens. Pick step or time.")
st.caption(f"Steps {lo:,}–{hi:,} · up to {buckets:,} buckets per chart · band: min–max of each bucket, line: "
           f"its {line} · red ▼: buckets holding NaN or ±Inf"
           + (" · drag across a chart to zoom" if x == "step" else ""))
if not events.empty:
    kinds_shown = [k for k in chart_style.INCIDENT_COLORS if k in set(events["kind"])]
    st.markdown(charts.events_legend_html(kinds_shown), unsafe_allow_html=True)

grid = st.columns(2)
for i, metric in enumerate(shown):
    if x == "step":  # buckets of whole LOD blocks over the shown steps: served from the LOD alone (~20x faster)
        curve = state.query(archive, "curve", run_id, metric, x=x, buckets=buckets, lo=lo, hi=hi, rank=rank,
                            align=True)
    else:
        curve = state.query(archive, "curve", run_id, metric, x=x, buckets=buckets, lo=x_lo, hi=x_hi, rank=rank)
    with grid[i % 2]:
        if curve.empty:
            st.info(f"No `{metric}` points in this range.")
            continue
        chart = charts.envelope(curve, metric=metric, x=x, log=log, smoothing=smoothing, line=line, events=events,
                                brush="zoom" if x == "step" else None)
        key = f"journey_chart_{metric}_{lo}_{hi}"  # a new zoom is a new chart: the old brush goes away
        if x == "step":  # drag across a chart to zoom into those steps
            st.altair_chart(chart, width="stretch", key=key, on_select=functools.partial(_zoom_to_brush, key),
                            selection_mode="zoom")
        else:
            st.altair_chart(chart, width="stretch", key=key)
        n_nan, n_pinf, n_ninf = (int(curve[c].sum()) for c in ("nan_count", "posinf_count", "neginf_count"))
        if n_nan or n_pinf or n_ninf:
            st.caption(f":red[{n_nan:,} NaN · {n_pinf:,} +Inf · {n_ninf:,} −Inf in view]")

if few_names:
    st.subheader("Summary values")
    st.caption("Series with only a few points (sizes, final scores): their values, not charts.")
    summary = points[points["name"].isin(few_names)].set_index("name").loc[few_names].reset_index()
    st.dataframe(summary[["name", "last", "last_step", "points"]], hide_index=True, key="journey_summary",
                 column_config={"name": st.column_config.TextColumn("series"),
                                "last": st.column_config.NumberColumn("value (last)", format="%.6g"),
                                "last_step": st.column_config.NumberColumn("step", format="localized"),
                                "points": st.column_config.NumberColumn("points", format="localized")})

# -- attempts ---------------------------------------------------------------------------------
st.subheader("Attempts")
if len(spans) > 1:
    lineage = state.query(archive, "attempt_lineage", run_id)
    st.caption("The journey stitches attempts together: for each step the latest attempt that reached it wins; "
               "earlier attempts' re-run steps are abandoned branches (dashed).")
    lineage_metric = series.loss_name(curve_names) or (curve_names or names)[0]
    per_attempt = state.attempt_curves(archive, run_id, lineage_metric)
    st.altair_chart(charts.lineage_chart(per_attempt, lineage, metric=lineage_metric, log=log), width="stretch",
                    key="journey_lineage")
else:
    lineage = state.sql_df(archive, "SELECT attempt, started_at, ended_at, end_status, seed, reason FROM attempts "
                                    "WHERE run_id = ? ORDER BY attempt", (run_id,))
    st.caption("One attempt: the run was never restarted.")
st.dataframe(lineage, hide_index=True, column_config={
    "first_step": st.column_config.NumberColumn("first step", format="localized"),
    "last_step": st.column_config.NumberColumn("last step", format="localized"),
    "resumed_from_step": st.column_config.NumberColumn("resumed from step", format="localized"),
    "abandoned_steps": st.column_config.NumberColumn("abandoned steps", format="localized"),
    "started_at": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
    "ended_at": st.column_config.DatetimeColumn("ended (UTC)", format="YYYY-MM-DD HH:mm:ss"),
})
