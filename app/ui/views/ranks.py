"""Ranks & GPUs: per-rank step time and GPU telemetry as rank x time heatmaps, a per-rank summary,
and stragglers (a rank whose median step time is slower than the ranks' median by a margin)."""

from __future__ import annotations

import streamlit as st

from app.ui import chart_style, heatmaps, state

st.title("Ranks & GPUs")
picked = state.require_run()
if picked is None:
    st.stop()
archive, run_id = picked

margin_pct = st.columns([1, 2])[0].slider("Straggler margin (% slower than the median rank)", 1, 100, 10,
                                          key="ranks_margin")
step_times = state.rank_step_times(archive, run_id)
summary = heatmaps.find_stragglers(step_times, margin=margin_pct / 100.0)
gpu = state.system_summary(archive, run_id)
if not gpu.empty:
    summary = gpu.merge(summary, on="rank", how="outer") if not summary.empty else gpu
stragglers = [int(r) for r in summary.loc[summary.get("straggler", False) == True, "rank"]] if (  # noqa: E712
    "straggler" in summary) else []

st.subheader("Per-rank summary")
if summary.empty:
    st.info("No per-rank data: this run logged neither `step_time_s` nor GPU samples.")
else:
    if stragglers:
        st.warning(f"Straggler rank(s): {', '.join(map(str, stragglers))} — median step time more than "
                   f"{margin_pct}% above the median of all ranks.")
    elif "straggler" in summary:
        st.success(f"No straggler: every rank is within {margin_pct}% of the median step time.")

    def _highlight(row):
        bad = bool(row.get("straggler", False))
        return ["background-color: rgba(214, 39, 40, 0.18)" if bad else "" for _ in row]

    order = [c for c in ("rank", "straggler", "slower_pct", "median_step_time_s", "p95_step_time_s", "mean_util_pct",
                         "mean_power_w", "max_temp_c", "max_mem_gb", "steps", "host", "gpu_uuid") if c in summary]
    st.dataframe(summary.style.apply(_highlight, axis=1), hide_index=True, column_order=order, column_config={
        "straggler": st.column_config.CheckboxColumn("straggler"),
        "median_step_time_s": st.column_config.NumberColumn("median step time (s)", format="%.3f"),
        "p95_step_time_s": st.column_config.NumberColumn("p95 step time (s)", format="%.3f"),
        "slower_pct": st.column_config.NumberColumn("slower than median (%)", format="%+.1f"),
        "steps": st.column_config.NumberColumn("steps", format="localized"),
        "mean_util_pct": st.column_config.NumberColumn("mean GPU util (%)", format="%.1f"),
        "mean_power_w": st.column_config.NumberColumn("mean power (W)", format="%.0f"),
        "max_temp_c": st.column_config.NumberColumn("max temp (°C)", format="%.0f"),
        "max_mem_gb": st.column_config.NumberColumn("max GPU memory (GB)", format="%.1f"),
    })

st.subheader("Step time per rank")
heat = state.step_time_heatmap(archive, run_id)
if heat.empty:
    st.info("No `step_time_s` metric in this run: `trainer_hooks` logs it by default; with the plain Writer, log "
            "`step_time_s` per rank.")
else:
    st.altair_chart(heatmaps.heatmap(heatmaps.with_bucket_ends(heat, "x_lo", "x_hi"), x="step",
                                   value_title="step time (s)", stragglers=stragglers), width="stretch",
                    key="ranks_step_heat")

st.subheader("GPU telemetry per rank and GPU")
names = state.system_names(archive, run_id)
if not names:
    st.info("No GPU samples in this run: the sampler was off (no NVML, no GPU, or `sample_gpu=False`). "
            "Install `flightlog[gpu]` on the training hosts to record utilisation, power, temperature and memory.")
else:
    preferred = [n for n in ("gpu.util", "gpu.power_w", "gpu.temp_c", "gpu.mem_used_bytes") if n in names]
    name = st.segmented_control("GPU metric", names, default=(preferred or names)[0], key="ranks_gpu_metric",
                                format_func=chart_style.metric_title) or (preferred or names)[0]
    heat = state.system_heatmap(archive, run_id, name)
    if heat.empty:
        st.info(f"No `{name}` samples in this run.")
    else:
        # a row per GPU: one process may drive several (gpu_index), W&B imports' gpu.0.*, gpu.1.*
        rows = heatmaps.with_bucket_ends(heat, "t_lo", "t_hi", by=["rank", "gpu_index"])
        st.altair_chart(heatmaps.heatmap(rows, x="time", value_title=chart_style.metric_title(name),
                                         stragglers=stragglers), width="stretch", key="ranks_gpu_heat")
