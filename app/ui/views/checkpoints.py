"""Checkpoints & data: checkpoints with their audit (optimizer state, dtypes, problems), data chunks
against steps, evaluations against tokens (and a benchmark × checkpoint heatmap), and memorization
against checkpoint, against how recently a chunk was read, and its correlation between checkpoints."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.ui import charts, eval_charts, state

st.title("Checkpoints & data")
picked = state.require_run()
if picked is None:
    st.stop()
archive, run_id = picked

# -- checkpoints --------------------------------------------------------------------------------
st.subheader("Checkpoints")
ckpts = state.sql_df(archive, "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step, attempt", (run_id,))
if ckpts.empty:
    st.info("No checkpoints recorded. `obs.checkpoint_saved(path, step=...)` audits and records each one "
            "(optimizer state present, weight and optimizer dtypes, size, hash).")
else:
    def _problems(row: pd.Series) -> list[str]:
        raw = row["problems"]
        found = [] if raw is None or isinstance(raw, float) else [str(p) for p in raw]
        if row["has_optimizer_state"] is False and not any("optimizer" in p for p in found):
            found.append("no optimizer state")
        return found

    ckpts["problems"] = ckpts.apply(_problems, axis=1)
    ckpts["audit"] = ["problems" if len(p) else "ok" for p in ckpts["problems"]]
    n_bad = int((ckpts["audit"] == "problems").sum())
    if n_bad:
        st.warning(f"{n_bad} of {len(ckpts)} checkpoints have audit problems (highlighted): resuming from them does "
                   "not restore the exact training state.")
    else:
        st.success(f"All {len(ckpts)} checkpoints passed the audit (optimizer state present, no dtype problems).")
    if "loss" in state.query(archive, "metric_names", run_id):
        loss = state.query(archive, "curve", run_id, "loss", buckets=800)
        st.altair_chart(charts.checkpoints_chart(loss, ckpts), width="stretch", key="ckpt_chart")
    cols = [c for c in ("step", "attempt", "tokens_seen", "uri", "bytes", "has_optimizer_state", "weights_dtypes",
                        "optimizer_dtypes", "data_chunk", "sha256", "problems")
            if c in ckpts and (c in ("step", "problems") or ckpts[c].notna().any())]

    def _highlight(row: pd.Series) -> list[str]:
        return ["background-color: rgba(214, 39, 40, 0.18)" if ckpts.loc[row.name, "audit"] == "problems" else ""
                for _ in row]

    st.dataframe(ckpts[cols].style.apply(_highlight, axis=1), hide_index=True, column_config={
        "step": st.column_config.NumberColumn("step", format="localized"),
        "tokens_seen": st.column_config.NumberColumn("tokens", format="compact"),
        "bytes": st.column_config.NumberColumn("size (bytes)", format="compact"),
        "has_optimizer_state": st.column_config.CheckboxColumn("optimizer state"),
        "weights_dtypes": st.column_config.ListColumn("weight dtypes"),
        "optimizer_dtypes": st.column_config.ListColumn("optimizer dtypes"),
        "problems": st.column_config.ListColumn("audit problems", width="large"),
    })
    st.caption(f"The audit ran when each checkpoint was saved. To re-read the files now (size, hash, optimizer "
               f"state, dtypes, steps against tokens, identical weights): `flightlog checkpoints verify {run_id}`")

# -- data chunks --------------------------------------------------------------------------------
st.subheader("Data chunks")
chunks = state.sql_df(archive, """
SELECT d.chunk_id, min(d.first_step) AS first_step, max(d.last_step) AS last_step, max(d.tokens) AS tokens,
       any_value(d.source_mix_json) AS source_mix_json,
       (SELECT count(*) FROM incidents i WHERE i.run_id = d.run_id AND i.data_chunk = d.chunk_id) AS incidents
FROM data_chunks d WHERE d.run_id = ? GROUP BY d.run_id, d.chunk_id ORDER BY d.chunk_id""", (run_id,))
if chunks.empty:
    st.info("No data chunks recorded. `obs.set_batch(chunk=..., sample_ids=...)` or `Writer.data_chunk(...)` "
            "records which data fed which steps, so an incident points at its data.")
else:
    st.altair_chart(charts.chunks_chart(chunks), width="stretch", key="chunks_chart")
    with st.expander(f"{len(chunks)} chunks (table)"):
        st.dataframe(chunks, hide_index=True)

# -- evals --------------------------------------------------------------------------------------
st.subheader("Evaluations")
evals = state.sql_df(archive, "SELECT * FROM evals WHERE run_id = ? ORDER BY benchmark, metric, step", (run_id,))
if evals.empty:
    st.info("No evaluations in this run. Import lm-evaluation-harness results with "
            "`flightlog import evals results_*.json --run RUN` (or a CSV), or write rows with "
            "`Writer.row('evals', step=..., benchmark=..., metric=..., value=..., stderr=...)`.")
else:
    series = sorted(eval_charts.series_label(evals).unique())
    picked_series = st.multiselect("benchmarks", series, default=series[:8], key="evals_series",
                                   help="benchmark / metric pairs drawn against tokens") if len(series) > 1 else series
    shown = evals[eval_charts.series_label(evals).isin(picked_series)]
    x_labels = {"linear": "linear", "log": "log scale", "index": "checkpoint index"}
    x_scale = st.radio("x axis", eval_charts.X_SCALES, format_func=x_labels.get, horizontal=True, key="evals_x",
                       help="log scale or one slot per checkpoint spread out log-spaced early checkpoints "
                            "(1, 2, 4, ..., 512, then every 1,000) that a linear axis piles up at 0")
    if not shown.empty:
        st.altair_chart(eval_charts.scores_chart(shown, x_scale=x_scale), width="stretch", key="evals_chart")
    if evals["step"].nunique() > 1:
        st.altair_chart(eval_charts.eval_heatmap(evals), width="stretch", key="evals_heatmap")
    with st.expander(f"{len(evals)} scores (table)"):
        st.dataframe(evals.drop(columns=["run_id"]), hide_index=True)

# -- memorization -------------------------------------------------------------------------------
mem = state.sql_df(archive, "SELECT * FROM memorization WHERE run_id = ? ORDER BY step, data_chunk", (run_id,))
st.subheader("Memorization")
if mem.empty:
    st.caption("No memorization scores in this run. `flightlog memorization --run RUN --chunk C` measures them "
               "for the reference trainer's checkpoints; `trainer_hooks.memorization.memorization_score` does it "
               "for any causal LM (write rows with `Writer.row('memorization', ...)`).")
else:
    groups = mem[["k", "l"]].drop_duplicates().sort_values(["k", "l"])
    labels = [f"k={int(k)}, l={int(cont)}" for k, cont in groups.itertuples(index=False)]
    label = st.selectbox("prompt / continuation", labels, key="mem_kl") if len(labels) > 1 else labels[0]
    k_sel, l_sel = groups.iloc[labels.index(label)]
    mem_kl = mem[(mem["k"] == k_sel) & (mem["l"] == l_sel)]
    measure = st.radio("score", ["token_match", "full_match"], horizontal=True, key="mem_measure",
                       help="token match: fraction of the l decoded tokens equal to the data; full match: fraction "
                            "of sequences reproduced exactly (k-extractible)")
    st.altair_chart(eval_charts.memorization_by_checkpoint(mem_kl, measure=measure), width="stretch",
                    key="mem_by_checkpoint")
    if not chunks.empty:
        st.altair_chart(eval_charts.memorization_by_recency(mem_kl, chunks, measure=measure), width="stretch",
                        key="mem_by_recency")
    if mem_kl["step"].nunique() > 1 and mem_kl["data_chunk"].nunique() > 1:
        st.altair_chart(eval_charts.memorization_correlation(mem_kl, measure=measure), width="stretch",
                        key="mem_correlation")
    st.dataframe(mem.drop(columns=["run_id"]), hide_index=True, column_config={
        "token_match": st.column_config.NumberColumn("token match", format="%.3f"),
        "full_match": st.column_config.NumberColumn("full match", format="%.3f"),
    })
