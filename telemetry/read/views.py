"""The archive's DuckDB views, over explicit file lists (never a glob: an in-progress file can never
break a query).

One view per table over its live files; `runs`/`attempts` keep the latest state per key (raw logs
as `runs_log`/`attempts_log`); `journey_metrics` is the run as its attempts stitched together
(for each step the latest attempt that reached it wins); `metrics_lod` the level-of-detail rows
in use; `incidents` and `chunk_incidents` the incident events with their data chunk and seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from data_schema import TABLES, schema
from telemetry.read import curves
from telemetry.read.footers import LiveFile
from telemetry.read.lod import LOD_SCHEMA
from telemetry.read.snapshot import Snapshot

# Events that are incidents of a run (as opposed to bookkeeping like checkpoint_saved).
INCIDENT_KINDS = (
    "nan", "inf", "loss_spike", "grad_spike", "oom", "gpu_xid", "gpu_throttle", "straggler", "data_chunk_skipped",
)
_LOGGED_STATE = {"runs": ("run_id",), "attempts": ("run_id", "attempt")}
_EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"


def duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t):
        return duck_type(t.value_type) + "[]"
    raise TypeError(f"no DuckDB type for {t}")


def qident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _null_column(f: pa.Field) -> str:
    """A column of all NULLs of the field's type (a file without the column, or no file at all)."""
    return f"CAST(NULL AS {duck_type(f.type)}) AS {qident(f.name)}"


SourceSql = Callable[[str, Sequence[LiveFile]], str]  # (table, files) -> SELECT of their rows


def table_source_sql(table: str, files: Sequence[LiveFile]) -> str:
    """SELECT of a table's schema columns (plus any extra ones) over exactly these files."""
    sch = schema(table)
    if not files:
        cols = ", ".join(_null_column(f) for f in sch)
        return f"SELECT {cols} WHERE false"
    column_sets = {f.columns for f in files}
    present = set().union(*column_sets)
    cols = [qident(f.name) if f.name in present else _null_column(f) for f in sch]
    cols += [qident(c) for c in sorted(present - set(sch.names))]
    src = curves.read_parquet_sql([f.local for f in files], union_by_name=len(column_sets) > 1)
    return f"SELECT {', '.join(cols)} FROM {src}"


def run_source_sql(table: str, files: Sequence[LiveFile], source_sql: SourceSql | None = None) -> str:
    """A table's rows over exactly these files, as its view shows them (a state log: its latest state);
    `source_sql` reads the files (default `table_source_sql`; an Archive's keeps small files in memory)."""
    source = (source_sql or table_source_sql)(table, files)
    return _latest_state_sql(table, source) if table in _LOGGED_STATE else source


def _latest_state_sql(table: str, source: str | None = None) -> str:
    """The latest state per key of a state-log table, over its `<table>_log` view or `source` (a SELECT)."""
    keys = _LOGGED_STATE[table]
    cols = [c for c in schema(table).names if c not in keys]
    # per column the latest non-null value: a partial update row (e.g. "crashed") keeps the rest
    aggs = ", ".join(f"arg_max({qident(c)}, _order) AS {qident(c)}" for c in cols)
    key_cols = ", ".join(keys)
    return (
        f"SELECT {key_cols}, {aggs} FROM (SELECT *, coalesce(updated_at, {_EPOCH}) AS _order "
        f"FROM {f'({source})' if source else f'{table}_log'}) "
        f"GROUP BY {key_cols}"
    )


# An anti join on (run_id, attempt) with a range residual: a correlated NOT EXISTS over the
# spans plans as a nested loop (14 s on 10 M rows; this form takes ~0.3 s).
JOURNEY_SQL = """
WITH spans AS (SELECT run_id, attempt, min(step) AS lo, max(step) AS hi FROM metrics GROUP BY run_id, attempt),
later AS (
    SELECT s.run_id, s.attempt, l.lo, l.hi FROM spans s JOIN spans l ON l.run_id = s.run_id AND l.attempt > s.attempt)
SELECT m.* FROM metrics m
ANTI JOIN later c ON c.run_id = m.run_id AND c.attempt = m.attempt AND m.step BETWEEN c.lo AND c.hi
"""

INCIDENTS_SQL = f"""
SELECT e.run_id, r.name AS run_name, e.attempt, a.seed, e.rank, e.step, e.wall_time, e.kind, e.severity, e.message,
       coalesce(e.data_chunk, (
           SELECT min(d.chunk_id) FROM data_chunks d
           WHERE d.run_id = e.run_id AND (d.attempt IS NULL OR d.attempt = e.attempt)
             AND e.step BETWEEN d.first_step AND d.last_step)) AS data_chunk,
       e.sample_ids, e.layer, e.details_json
FROM events e
LEFT JOIN attempts a ON a.run_id = e.run_id AND a.attempt = e.attempt
LEFT JOIN runs r ON r.run_id = e.run_id
WHERE e.kind IN ({", ".join(curves.quote_str(k) for k in INCIDENT_KINDS)})
"""

CHUNK_INCIDENTS_SQL = """
SELECT data_chunk, count(*) AS n_incidents, count(DISTINCT (run_id, attempt)) AS n_attempts,
       count(DISTINCT run_id) AS n_runs, count(DISTINCT seed) AS n_seeds,
       list(DISTINCT seed ORDER BY seed) FILTER (seed IS NOT NULL) AS seeds,
       list(DISTINCT kind ORDER BY kind) AS kinds, list(DISTINCT run_id ORDER BY run_id) AS runs,
       min(step) AS first_step, max(step) AS last_step
FROM incidents WHERE data_chunk IS NOT NULL
GROUP BY data_chunk
"""


def snapshot_spans(files: Sequence[LiveFile]) -> dict[str, dict[int, tuple[int, int]]] | None:
    """{run_id: {attempt: (min step, max step)}} of metric files from their footers (segment and staged
    file names carry the attempt; compact files record their spans); None when a file does not tell."""
    spans: dict[str, dict[int, tuple[int, int]]] = {}
    for f in files:
        if f.rows == 0:
            continue
        if f.key.kind != "compact" and f.step_range is not None and f.key.attempt is not None:
            found: Sequence[tuple[int, int, int]] = ((int(f.key.attempt), *f.step_range),)
        elif f.key.kind == "compact" and f.attempt_spans is not None:
            found = f.attempt_spans
        else:
            return None
        run = spans.setdefault(f.key.run_id, {})
        for a, lo, hi in found:
            old = run.get(a)
            run[a] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return spans


def journey_sql(files: Sequence[LiveFile]) -> str:
    """The journey_metrics view. From the footers' spans when they tell: no view scan for them, and
    runs with a single attempt (most) pass straight through; else the anti join over scanned spans."""
    spans = snapshot_spans(files)
    if spans is None:
        return JOURNEY_SQL
    later = [(run, a, lo, hi) for run, by in sorted(spans.items()) for a in by
             for b, (lo, hi) in by.items() if b > a]
    if not later:
        return "SELECT * FROM metrics"
    runs = sorted({r for r, *_ in later})
    values = ", ".join(f"({curves.quote_str(r)}, {int(a)}, {int(lo)}, {int(hi)})" for r, a, lo, hi in later)
    in_runs = ", ".join(curves.quote_str(r) for r in runs)
    return f"""
WITH later(run_id, attempt, lo, hi) AS (VALUES {values})
SELECT * FROM metrics WHERE run_id NOT IN ({in_runs})
UNION ALL
SELECT m.* FROM (SELECT * FROM metrics WHERE run_id IN ({in_runs})) m
ANTI JOIN later c ON c.run_id = m.run_id AND c.attempt = m.attempt AND m.step BETWEEN c.lo AND c.hi
"""


# Each view and the views it reads: CREATE VIEW binds at once, so a view's parts are created first.
VIEW_PARTS: dict[str, tuple[str, ...]] = {
    **{(f"{t}_log" if t in _LOGGED_STATE else t): () for t in TABLES},
    "runs": ("runs_log",), "attempts": ("attempts_log",), "journey_metrics": ("metrics",), "metrics_lod": (),
    "incidents": ("events", "data_chunks", "attempts", "runs"), "chunk_incidents": ("incidents",),
}
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
_INTROSPECTION = {"duckdb_views", "duckdb_tables", "duckdb_columns", "duckdb_dependencies", "information_schema",
                  "show", "sqlite_master", "pragma_table_info", "pragma_show_tables", "table_info"}
_WORD = re.compile(r"(?<![\w.])([A-Za-z_][A-Za-z0-9_]*)")


def views_named_in(sql: str) -> set[str]:
    """The archive's views a query may read: its words outside string literals that name one (a column
    that shares a view's name only costs building that view). File paths inside literals never count."""
    words = {w.lower() for w in _WORD.findall(_STRING_LITERAL.sub("''", sql))}
    if words & _INTROSPECTION:
        return set(VIEW_PARTS)  # a query about the views themselves sees all of them
    return {v for v in VIEW_PARTS if v in words}


def with_parts(names: Iterable[str]) -> list[str]:
    """The views `names` and every view they read, each after its parts."""
    out: list[str] = []

    def add(name: str) -> None:
        for part in VIEW_PARTS[name]:
            add(part)
        if name not in out:
            out.append(name)

    for name in sorted(names):
        add(name)
    return out


def view_tables(names: Iterable[str]) -> set[str]:
    """The tables whose files the views `names` read."""
    return {n.removesuffix("_log") for n in with_parts(names) if n.removesuffix("_log") in TABLES}


def view_sql(snap: Snapshot, name: str, source_sql: SourceSql | None = None) -> str:
    if name in _LOGGED_STATE:
        return _latest_state_sql(name)
    table = name.removesuffix("_log")
    if name in TABLES or (name.endswith("_log") and table in _LOGGED_STATE):
        return (source_sql or table_source_sql)(table, snap.files.get(table, []))
    return {"journey_metrics": lambda: journey_sql(snap.files.get("metrics", [])),
            "metrics_lod": lambda: lod_source_sql(list(snap.lod.values())),
            "incidents": lambda: INCIDENTS_SQL, "chunk_incidents": lambda: CHUNK_INCIDENTS_SQL}[name]()


def create_views(con: duckdb.DuckDBPyConnection, snap: Snapshot, names: Iterable[str] | None = None,
                 source_sql: SourceSql | None = None) -> list[str]:
    """(Re)create the views `names` (default: every view of the archive) and the views they read in `con`
    over the snapshot's files (read by `source_sql`, default `table_source_sql`); returns the views created."""
    created = with_parts(VIEW_PARTS if names is None else names)
    for name in created:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {view_sql(snap, name, source_sql)}")
    return created


def lod_source_sql(infos: Sequence[Any]) -> str:
    """The level-of-detail rows of these LOD files (telemetry.read.lod), or an empty SELECT of their columns."""
    paths = [i.local for i in infos if i.local]
    if not paths:
        cols = ", ".join(_null_column(f) for f in LOD_SCHEMA)
        return f"SELECT {cols} WHERE false"
    return f"SELECT * FROM {curves.read_parquet_sql(paths)}"


def new_connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    con.execute("SET GLOBAL parquet_metadata_cache = true")  # segments are immutable: footers parse once
    # Parquet min/max leave NaN out: without this DuckDB 2.0 folds isnan(value) to false from them
    con.execute("SET GLOBAL parquet_can_have_nan = true")  # GLOBAL: cursors are new sessions
    return con
