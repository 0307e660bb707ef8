"""Journey of one run: loss, grad norm, lr and throughput as min-max bands with NaN/Inf markers,
incidents overlaid, zoom that re-queries at full resolution, and the attempts' lineage."""

from __future__ import annotations

import functools

import streamlit as st

from app.ui import chart_style, charts, journey_data, state

picked = state.require_run()
if picked is None:
    st.title("Journey")
    st.stop()
archive, run_id = picked
run = journey_data.run_facts(archive, run_id)  # this run's row: reads only its files; spans from footers: no scan
info, spans, names = run.info, run.spans, run.names
name = info["name"] if isinstance(info["name"], str) else run_id
st.title(f"Journey of {name}")

st.caption(" · ".join([
    f"**{info['status']}**", f"{chart_style.fmt_count(info['steps'])} steps",
    f"{chart_style.fmt_count(info['tokens'])} tokens",
    f"{int(info['attempts'])} attempt(s)", f"{int(info['ranks'])} rank(s)", f"{int(info['incidents'])} incident(s)",
    f"run id `{run_id}`"]))
if not spans:
    st.info("This run has no metrics yet. If it is training now, its first segment appears after the writer's "
            "segment interval (60 s by default); press *Re-scan the archive* in the sidebar.")
    st.stop()

first, last = run.first, run.last

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


points, curve_names, few_names = run.points, run.curve_names, run.few_names
default_metrics = run.default_metrics
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
view = journey_data.JourneyView(run_id, lo, hi, zoomed=zoomed, x=x, rank=rank, overlay=tuple(overlay), log=log,
                                smoothing=smoothing, line=line)

# -- curves (queries and charts cached per archive version: a first visit finds the warm-up's) --------------
events = journey_data.events(archive, view, names)
if x == "tokens" and "tokens_seen" not in names:
    st.warning("This run logged no `tokens_seen`: showing nothing against tokens. Pick step or time.")
st.caption(f"Steps {lo:,}–{hi:,} · up to {view.buckets:,} buckets per chart · band: min–max of each bucket, line: "
           f"its {line} · red ▼: buckets holding NaN or ±Inf"
           + (" · drag across a chart to zoom" if x == "step" else ""))
if not events.empty:
    kinds_shown = [k for k in chart_style.INCIDENT_COLORS if k in set(events["kind"])]
    st.markdown(charts.events_legend_html(kinds_shown), unsafe_allow_html=True)

grid = st.columns(2)
for i, metric in enumerate(shown):
    drawn = journey_data.chart(archive, view, metric, names)
    with grid[i % 2]:
        if drawn.spec is None:
            st.info(f"No `{metric}` points in this range.")
            continue
        key = f"journey_chart_{metric}_{lo}_{hi}"  # a new zoom is a new chart: the old brush goes away
        if x == "step":  # drag across a chart to zoom into those steps
            st.vega_lite_chart(spec=drawn.spec, width="stretch", key=key,
                               on_select=functools.partial(_zoom_to_brush, key), selection_mode="zoom")
        else:
            st.vega_lite_chart(spec=drawn.spec, width="stretch", key=key)
        if drawn.nan or drawn.posinf or drawn.neginf:
            st.caption(f":red[{drawn.nan:,} NaN · {drawn.posinf:,} +Inf · {drawn.neginf:,} −Inf in view]")

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
    lineage = journey_data.lineage(archive, run_id)
    st.caption("The journey stitches attempts together: for each step the latest attempt that reached it wins; "
               "earlier attempts' re-run steps are abandoned branches (dashed).")
    st.vega_lite_chart(spec=journey_data.lineage_chart(archive, run_id, run.lineage_metric, log), width="stretch",
                       key="journey_lineage")
else:
    lineage = journey_data.single_attempt(archive, run_id)
    st.caption("One attempt: the run was never restarted.")
st.markdown(journey_data.attempts_markdown(lineage))
