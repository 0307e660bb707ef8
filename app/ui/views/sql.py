"""SQL console: read-only queries over the archive's views through the sandbox (row cap, time
limit), a chart of the result, CSV/Parquet downloads. A refused query is a message, not a crash."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import streamlit as st

from app.ui import charts, state
from telemetry.store.errors import ArchiveError

EXAMPLES = {
    "Runs": "SELECT run_id, name, status, created_at FROM runs ORDER BY created_at DESC",
    "Loss every 100 steps (journey)": (
        "SELECT step, avg(value) AS loss FROM journey_metrics\n"
        "WHERE run_id = '{run}' AND name = 'loss' AND step % 100 = 0\nGROUP BY step ORDER BY step"),
    "NaN/Inf per metric": (
        "SELECT run_id, name, count(*) FILTER (WHERE isnan(value)) AS nan,\n"
        "       count(*) FILTER (WHERE isinf(value)) AS inf\nFROM metrics GROUP BY ALL HAVING nan + inf > 0"),
    "Incidents with their data chunk": "SELECT run_name, attempt, seed, step, kind, data_chunk, message FROM incidents",
    "Chunks that fail in several attempts": "SELECT * FROM chunk_incidents ORDER BY n_attempts DESC",
    "Checkpoints without optimizer state": (
        "SELECT run_id, step, uri, weights_dtypes FROM checkpoints WHERE NOT has_optimizer_state"),
    "Median step time per rank": (
        "SELECT run_id, rank, median(value) AS median_step_time_s FROM metrics\n"
        "WHERE name = 'step_time_s' GROUP BY ALL ORDER BY run_id, rank"),
    "Tables and columns": "DESCRIBE metrics",
}
ROW_LIMIT = 10_000

st.title("SQL")
archive = state.current_archive()
if archive is None:
    st.stop()
st.caption("Read-only DuckDB SQL over the archive's views: `runs`, `attempts`, `ranks`, `metrics`, "
           "`journey_metrics`, `system`, `events`, `incidents`, `chunk_incidents`, `checkpoints`, `data_chunks`, "
           f"`evals`, `memorization`. At most {ROW_LIMIT:,} rows per result; nothing outside the archive can be read.")


def _use_example() -> None:
    key = st.session_state.get("sql_example")
    if key:
        st.session_state["sql_text"] = EXAMPLES[key].replace("{run}", state.current_run() or "")


c1, c2 = st.columns([3, 1])
c1.selectbox("Example queries", list(EXAMPLES), index=None, key="sql_example", on_change=_use_example,
             placeholder="pick an example to start from")
timeout_s = c2.number_input("Time limit (s)", min_value=1, max_value=60, value=10, key="sql_timeout")
if "sql_text" not in st.session_state:
    st.session_state["sql_text"] = EXAMPLES["Runs"]
sql = st.text_area("Query", key="sql_text", height=140)
if st.button("Run query", type="primary", key="sql_run"):
    st.session_state.pop("sql_result", None)
    st.session_state.pop("sql_error", None)
    try:
        result = state.sandbox(archive.url, ROW_LIMIT, float(timeout_s)).run_result(sql)
    except ArchiveError as exc:  # SandboxError and QueryError: the reader's query, not our bug
        st.session_state["sql_error"] = str(exc)
    else:
        st.session_state["sql_result"] = result

if "sql_error" in st.session_state:
    st.error(f"The query did not run: {st.session_state['sql_error']}", icon=":material/block:")
result = st.session_state.get("sql_result")
if result is None:
    st.stop()

df = result.table.to_pandas()
note = f" (cut at the {ROW_LIMIT:,}-row cap: add a LIMIT or aggregate)" if result.truncated else ""
st.caption(f"{len(df):,} rows × {len(df.columns)} columns in {result.elapsed_s * 1000:,.0f} ms{note}")
st.dataframe(df, hide_index=True, key="sql_table")
d1, d2, _ = st.columns([1, 1, 4])
d1.download_button("Download CSV", df.to_csv(index=False).encode(), "flightlog-query.csv", "text/csv",
                   key="sql_csv")
buf = io.BytesIO()
pq.write_table(result.table, buf)
d2.download_button("Download Parquet", buf.getvalue(), "flightlog-query.parquet", "application/vnd.apache.parquet",
                   key="sql_parquet")

numeric = [c for c in df.columns if df[c].dtype.kind in "iuf"]
if len(df) and numeric:
    st.subheader("Chart the result")
    e1, e2, e3, e4 = st.columns(4)
    x = e1.selectbox("x", list(df.columns), key="sql_x")
    y = e2.selectbox("y", numeric, index=min(1, len(numeric) - 1) if numeric[0] == x and len(numeric) > 1 else 0,
                     key="sql_y")
    color = e3.selectbox("Colour by", [None] + [c for c in df.columns if c not in (x, y)], key="sql_color")
    kind = e4.segmented_control("Mark", ["line", "points", "bars"], default="line", key="sql_mark") or "line"
    st.altair_chart(charts.result_chart(df, x=x, y=y, kind=kind, color=color), width="stretch", key="sql_chart")
