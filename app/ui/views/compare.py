"""Compare: one metric of several runs overlaid, aligned by step or by tokens seen."""

from __future__ import annotations

import streamlit as st

from app.ui import chart_style, charts, state
from telemetry.read import series

st.title("Compare runs")
archive = state.current_archive()
if archive is None:
    st.stop()
runs = state.query(archive, "runs")
with_points = runs[runs["steps"].notna()]
if with_points.empty:
    st.info("No run with metrics to compare yet.")
    st.stop()
ids = list(with_points["run_id"])
names = dict(zip(runs["run_id"], runs["name"].fillna(runs["run_id"]), strict=True))
current = state.current_run()
default = ([current] if current in ids else []) + [r for r in ids if r != current][:2]
c1, c2, c3, c4 = st.columns([4, 2, 2, 1])
chosen = c1.multiselect("Runs", ids, default=default, key="cmp_runs", format_func=lambda r: names[r])
# the journey's order (telemetry.read.series); the first chosen run's loss first, whatever tool named it
all_names = series.order_series(sorted({n for r in chosen for n in state.query(archive, "metric_names", r)}))
first_loss = series.loss_name(state.query(archive, "metric_names", chosen[0])) if chosen else None
metric = c2.selectbox("Metric", all_names, index=all_names.index(first_loss) if first_loss else 0,
                      key="cmp_metric", format_func=chart_style.metric_title) if all_names else None
x = c3.segmented_control("Align by", ["step", "tokens"], default="step", key="cmp_x",
                         format_func=lambda v: chart_style.X_TITLES[v]) or "step"
log = c4.toggle("Log y", key="cmp_log")
if not chosen or metric is None:
    st.info("Pick at least one run with metrics.")
    st.stop()

curves, missing = {}, []
for run in chosen:
    if metric not in state.query(archive, "metric_names", run):
        missing.append(names[run])
        continue
    curve = state.query(archive, "curve", run, metric, x=x, buckets=1000)
    if curve.empty:
        missing.append(names[run])
    else:
        curves[names[run]] = curve
if missing:
    st.caption(f"Not shown (no `{metric}`{' against tokens' if x == 'tokens' else ''}): {', '.join(missing)}")
if curves:
    st.altair_chart(charts.compare_chart(curves, metric=metric, x=x, log=log), width="stretch", key="cmp_chart")
    rows = [{"run": run, "points": int(c["count"].sum()), "min": c["min"].min(), "max": c["max"].max(),
             "last": c["last"].iloc[-1], "NaN/Inf": int(c[["nan_count", "posinf_count", "neginf_count"]].sum().sum())}
            for run, c in curves.items()]
    st.dataframe(rows, hide_index=True)
else:
    st.info(f"None of the chosen runs has `{metric}` points to draw.")
