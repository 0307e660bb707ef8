"""Runs: every run of the archive, filterable, with links into each view."""

from __future__ import annotations

import streamlit as st

from app.ui import state

st.title("Runs")
archive = state.current_archive()
if archive is None:
    st.info("Open an archive in the sidebar: a folder written by flightlog, or a published archive URL.")
    st.stop()

runs = state.query(archive, "runs")
st.caption(f"Archive `{archive.url}` · {len(runs)} runs")
if runs.empty:
    st.info("This archive holds no runs yet. Record one with `trainer_hooks.attach(model, optimizer, run=...)`, "
            "try `flightlog demo`, or import W&B/TensorBoard logs with `flightlog import`.")
    st.stop()

c1, c2 = st.columns([1, 2])
statuses = sorted(s for s in runs["status"].dropna().unique())
chosen = c1.multiselect("Status", statuses, default=statuses, key="runs_status")
text = c2.text_input("Name contains", key="runs_text", placeholder="e.g. 7b or ablation")
shown = runs[runs["status"].isin(chosen) | runs["status"].isna()]
if text.strip():
    needle = text.strip().lower()
    shown = shown[shown["name"].fillna("").str.lower().str.contains(needle, regex=False)
                  | shown["run_id"].str.lower().str.contains(needle, regex=False)]
if shown.empty:
    st.info("No run matches these filters.")
    st.stop()

table = shown[["name", "run_id", "status", "steps", "tokens", "attempts", "ranks", "last_loss", "incidents",
               "created_at"]].copy()
table["name"] = table["name"].fillna(table["run_id"])
table["journey"] = [state.page_link_url("journey", run=r) for r in table["run_id"]]
event = st.dataframe(
    table, hide_index=True, on_select="rerun", selection_mode="single-row", key="runs_table",
    column_config={
        "name": st.column_config.TextColumn("name", width="medium"),
        "run_id": st.column_config.TextColumn("run id"),
        "steps": st.column_config.NumberColumn("steps", format="localized"),
        "tokens": st.column_config.NumberColumn("tokens", format="compact"),
        "last_loss": st.column_config.NumberColumn("last loss", format="%.4f"),
        "incidents": st.column_config.NumberColumn("incidents", help="NaN/Inf, spikes, OOM, XID, skipped chunks"),
        "created_at": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
        "journey": st.column_config.LinkColumn("journey", display_text="open journey"),
    },
)
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
picked = table.iloc[rows[0]]["run_id"] if rows else state.current_run()
if picked is not None:
    st.subheader(f"Open {table.set_index('run_id').loc[picked, 'name'] if picked in set(table['run_id']) else picked}")
    cols = st.columns(5)
    for col, (url, title) in zip(cols, [("journey", "Journey"), ("incidents", "Incidents"), ("ranks", "Ranks & GPUs"),
                                        ("checkpoints", "Checkpoints & data"), ("compare", "Compare")], strict=True):
        col.page_link(state.PAGE_PATHS[url],
                      label=title, query_params={"run": picked}, icon=":material/arrow_forward:")
