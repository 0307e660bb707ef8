"""Journey of one run: loss, grad norm, lr and throughput as min-max bands with NaN/Inf markers,
incidents overlaid, zoom that re-queries at full resolution, and the attempts' lineage."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.ui import charts, state

picked = state.require_run()
if picked is None:
    st.title("Journey")
    st.stop()
archive, run_id = picked
runs = state.query(archive, "runs").set_index("run_id")
info = runs.loc[run_id]
name = info["name"] if isinstance(info["name"], str) else run_id
st.title(f"Journey of {name}")

lineage = state.query(archive, "attempt_lineage", run_id)
spans = lineage.dropna(subset=["first_step", "last_step"])
cols = st.columns(6)
cols[0].metric("status", str(info["status"]))
cols[1].metric("steps", f"{int(info['steps']):,}" if pd.notna(info["steps"]) else "—")
cols[2].metric("tokens", charts.fmt_count(info["tokens"]))
cols[3].metric("attempts", int(info["attempts"]))
cols[4].metric("ranks", int(info["ranks"]))
cols[5].metric("incidents", int(info["incidents"]))
if spans.empty:
    st.info("This run has no metrics yet. If it is training now, its first segment appears after the writer's "
            "segment interval (60 s by default); press *Re-scan the archive* in the sidebar.")
    st.stop()

first, last = int(spans["first_step"].min()), int(spans["last_step"].max())
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


default_metrics = [m for m in ("loss", "grad_norm", "lr", "tokens_per_s") if m in names] or names[:4]
with st.container(border=True):
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    shown = c1.multiselect("Metrics", names, default=default_metrics, key="journey_metrics",
                           format_func=charts.metric_title)
    x = c2.segmented_control("x axis", ["step", "tokens", "time"], default="step", key="journey_x",
                             format_func=lambda v: charts.X_TITLES[v]) or "step"
    line = c3.segmented_control("Line", ["mean", "last"], default="mean", key="journey_line",
                                help="the band is always the bucket's min-max; the line its mean or last value") or "mean"
    rank_options = ["all ranks"] + [f"rank {r}" for r in range(int(info["ranks"] or 1))]
    rank_label = c4.selectbox("Ranks", rank_options, key="journey_rank",
                              help="all ranks: each bucket spans every rank's values")
    d1, d2, d3, d4, d5 = st.columns([2, 2, 1, 2, 2])
    lo = d1.number_input("From step", min_value=first, max_value=last, step=1, key="zoom_lo")
    hi = d2.number_input("To step", min_value=first, max_value=last, step=1, key="zoom_hi")
    d3.button("Reset zoom", on_click=_reset_zoom, help=f"steps {first:,}–{last:,}")
    log = d4.toggle("Log scale (y)", key="journey_log")
    smoothing = d5.slider("Smoothing (buckets)", 0, 50, 0, key="journey_smooth",
                          help="EMA of the line only; the min-max band stays raw so spikes stay visible")
    overlay = st.multiselect("Events on the charts", list(charts.OVERLAY_KINDS), default=list(charts.OVERLAY_KINDS),
                             key="journey_events")
lo, hi = (int(lo), int(hi)) if lo <= hi else (int(hi), int(lo))
zoomed = (lo, hi) != (first, last)
if zoomed:
    st.query_params["lo"], st.query_params["hi"] = str(lo), str(hi)
else:
    st.query_params.pop("lo", None)
    st.query_params.pop("hi", None)
rank = None if rank_label == "all ranks" else int(rank_label.split()[1])
buckets = 1000

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
events = charts.events_on_x(events, x, tokens_curve) if not events.empty else events
if x == "tokens" and "tokens_seen" not in names:
    st.warning("This run logged no `tokens_seen`: showing nothing against tokens. Pick step or time.")
st.caption(f"Steps {lo:,}–{hi:,} · up to {buckets:,} buckets per chart · band: min–max of each bucket · "
           "red ▼: buckets holding NaN or ±Inf")

grid = st.columns(2)
for i, metric in enumerate(shown):
    curve = state.query(archive, "curve", run_id, metric, x=x, buckets=buckets, lo=x_lo, hi=x_hi, rank=rank)
    with grid[i % 2]:
        if curve.empty:
            st.info(f"No `{metric}` points in this range.")
            continue
        chart = charts.envelope(curve, metric=metric, x=x, log=log, smoothing=smoothing, line=line, events=events)
        st.altair_chart(chart, width="stretch", key=f"journey_chart_{metric}")
        n_nan, n_pinf, n_ninf = (int(curve[c].sum()) for c in ("nan_count", "posinf_count", "neginf_count"))
        if n_nan or n_pinf or n_ninf:
            st.caption(f":red[{n_nan:,} NaN · {n_pinf:,} +Inf · {n_ninf:,} −Inf in view]")

# -- attempts ---------------------------------------------------------------------------------
st.subheader("Attempts")
if len(lineage) > 1:
    st.caption("The journey stitches attempts together: for each step the latest attempt that reached it wins; "
               "earlier attempts' re-run steps are abandoned branches (dashed).")
    lineage_metric = "loss" if "loss" in names else names[0]
    per_attempt = state.attempt_curves(archive, run_id, lineage_metric)
    st.altair_chart(charts.lineage_chart(per_attempt, lineage, metric=lineage_metric, log=log), width="stretch",
                    key="journey_lineage")
else:
    st.caption("One attempt: the run was never restarted.")
st.dataframe(lineage, hide_index=True, column_config={
    "first_step": st.column_config.NumberColumn("first step", format="localized"),
    "last_step": st.column_config.NumberColumn("last step", format="localized"),
    "resumed_from_step": st.column_config.NumberColumn("resumed from step", format="localized"),
    "abandoned_steps": st.column_config.NumberColumn("abandoned steps", format="localized"),
    "started_at": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
    "ended_at": st.column_config.DatetimeColumn("ended (UTC)", format="YYYY-MM-DD HH:mm:ss"),
})
