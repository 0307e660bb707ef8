"""Incidents: every event of a run, filterable; one event's drill-down (metrics around it, its data
chunk and samples, and that chunk's history in other attempts, seeds and runs)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.ui import chart_frames, charts, state
from telemetry.read import series

AROUND_CHARTS = 12  # charts around an event, in the journey's order; the table below holds every metric

st.title("Incidents")
picked = state.require_run()
if picked is None:
    st.stop()
archive, run_id = picked
events = state.query(archive, "events", run_id)
if events.empty:
    st.info("No events in this run: no NaN/Inf, spikes, restarts or checkpoints were recorded. Events come from "
            "`trainer_hooks` (NaN and spike detection, checkpoints) or `Writer.event(kind, ...)`.")
    st.stop()

# -- filters ----------------------------------------------------------------------------------
with st.container(border=True):
    c1, c2, c3, c4 = st.columns(4)

    def _choices(col: str) -> list:
        return sorted(v for v in events[col].dropna().unique())

    kinds = c1.multiselect("Kind", _choices("kind"), key="inc_kind", placeholder="all kinds")
    severities = c2.multiselect("Severity", _choices("severity"), key="inc_sev", placeholder="all severities")
    ranks = c3.multiselect("Rank", _choices("rank"), key="inc_rank", placeholder="all ranks")
    attempts = c4.multiselect("Attempt", _choices("attempt"), key="inc_attempt", placeholder="all attempts")
shown = events
for col, chosen in (("kind", kinds), ("severity", severities), ("rank", ranks), ("attempt", attempts)):
    if chosen:
        shown = shown[shown[col].isin(chosen)]
shown = shown.reset_index(drop=True)
counts = events["kind"].value_counts()
st.caption(f"{len(shown):,} of {len(events):,} events · " + " · ".join(f"{k}: {n}" for k, n in counts.items()))
if shown.empty:
    st.info("No event matches these filters.")
    st.stop()

columns = [c for c in ("step", "attempt", "rank", "kind", "severity", "message", "data_chunk", "sample_ids", "layer",
                       "wall_time") if c in shown and (shown[c].notna().any() or c in ("step", "kind"))]
selection = st.dataframe(
    shown[columns], hide_index=True, on_select="rerun", selection_mode="single-row", key="inc_table",
    height=min(36 * (len(shown) + 1) + 4, 250),
    column_config={"step": st.column_config.NumberColumn("step", format="localized"),
                   "data_chunk": st.column_config.NumberColumn("data chunk"),
                   "sample_ids": st.column_config.ListColumn("sample ids"),
                   "wall_time": st.column_config.DatetimeColumn("time (UTC)", format="YYYY-MM-DD HH:mm:ss")},
)
rows = list(selection.selection.rows) if selection is not None and hasattr(selection, "selection") else []


def _label(i: int) -> str:
    e = shown.iloc[i]
    step = f"step {int(e['step']):,}" if pd.notna(e["step"]) else "no step"
    return f"{e['kind']} · {step} · attempt {e['attempt']} · rank {e['rank']}"


if rows and st.session_state.get("_inc_rows") != rows:
    st.session_state["inc_pick"] = rows[0]
st.session_state["_inc_rows"] = rows
if st.session_state.get("inc_pick") not in range(len(shown)):
    incident_idx = [i for i, k in enumerate(shown["kind"]) if k in ("nan", "inf", "loss_spike", "grad_spike")]
    st.session_state["inc_pick"] = incident_idx[0] if incident_idx else 0

# -- drill-down -------------------------------------------------------------------------------
st.subheader("Drill-down")
d1, d2 = st.columns([3, 1])
pick = d1.selectbox("Event", range(len(shown)), format_func=_label, key="inc_pick",
                    help="or select a row in the table above")
radius = d2.number_input("± steps", min_value=1, max_value=5000, value=20, step=5, key="inc_radius")
ev = shown.iloc[int(pick)]
st.markdown(f"**{ev['kind']}** ({ev['severity']}) at step **{int(ev['step']):,}**" if pd.notna(ev["step"]) else
            f"**{ev['kind']}** ({ev['severity']}), no step")
if isinstance(ev.get("message"), str) and ev["message"]:
    st.caption(ev["message"])

left, right = st.columns([3, 2])
with left:
    if pd.notna(ev["step"]):
        step = int(ev["step"])
        around = state.query(archive, "metrics", run_id, None, lo=max(0, step - int(radius)), hi=step + int(radius),
                             attempt=int(ev["attempt"]), journey=False)
        if around.empty:
            st.info(f"No metrics were logged within ±{int(radius)} steps of this event by attempt {ev['attempt']}.")
        else:
            around = chart_frames.downsample_minmax(around, "step", "value", by="name")
            names = series.order_series(around["name"].unique())
            shown_names = names[:AROUND_CHARTS]
            st.caption("Each metric around the event: one line per rank (hover for its rank and value), "
                       "red rules at NaN/Inf, the event's step dashed.")
            grid = st.columns(2)  # each chart stretches to its half of this column, never past it
            for i, name in enumerate(shown_names):
                with grid[i % 2]:
                    st.altair_chart(charts.around_chart(around, center=step, name=name), width="stretch",
                                    key=f"inc_around_{i}")
            if len(names) > len(shown_names):
                st.caption(f"{len(names) - len(shown_names)} more metrics in the table below.")
            with st.expander("Every metric around the event (table)"):
                wide = around.pivot_table(index=["step", "rank"], columns="name", values="value", aggfunc="first")
                st.dataframe(wide.reset_index(), hide_index=True)
    else:
        st.info("This event has no step, so there is nothing to show around it.")
with right:
    st.markdown("**Data**")
    chunk = ev.get("data_chunk")
    samples = ev.get("sample_ids")
    has_samples = samples is not None and not (isinstance(samples, float) and pd.isna(samples)) and len(samples) > 0
    if pd.isna(chunk) and not has_samples:
        st.caption("No data chunk or sample ids recorded with this event. `obs.set_batch(chunk=..., sample_ids=...)` "
                   "records them.")
    if pd.notna(chunk):
        st.write(f"Data chunk **{int(chunk)}**")
    if has_samples:
        st.write("Sample ids: " + ", ".join(str(int(s)) for s in list(samples)[:50]) +
                 (f" … ({len(samples)} in all)" if len(samples) > 50 else ""))
    if pd.notna(chunk):
        history = state.query(archive, "incidents")
        history = history[history["data_chunk"] == int(chunk)]
        st.markdown(f"**Chunk {int(chunk)} across attempts, seeds and runs**")
        n_attempts = history[["run_id", "attempt"]].drop_duplicates().shape[0]
        seeds = sorted(int(s) for s in history["seed"].dropna().unique())
        if n_attempts > 1:
            st.warning(f"Chunk {int(chunk)} had incidents in {n_attempts} attempts (seeds {seeds or 'unknown'}): "
                       "it misbehaves whatever the order; consider skipping or inspecting it.")
        st.dataframe(history[["run_name", "attempt", "seed", "step", "kind", "message"]], hide_index=True,
                     column_config={"step": st.column_config.NumberColumn("step", format="localized")})
