"""`Archive`: an archive's live files as DuckDB views (telemetry.read.views), and the query methods
the app and CLI use: runs, metrics, events, incidents, a run's attempts, curves (curve_queries.py).

Opening scans the archive once (telemetry.read.catalog: footer facts from the runs' indexes, so no
data file is opened); `refresh()` scans again, reading only the footers of new files. Views are built
when a query first names them and rebuilt only after the live files changed; a query about one run
reads only that run's files. A remote archive's files are copied into the bounded local cache only when
a query reads them. A query that fails on a file broken past its footer leaves that file out and runs
again (telemetry.read.broken_files).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from telemetry.read import curves, series, tail_lod
from telemetry.read.broken_files import BrokenFileError, FilesGoneError, heals, may_be_a_broken_file
from telemetry.read.catalog import Catalog
from telemetry.read.curve_queries import CurveQueries
from telemetry.read.footers import LiveFile
from telemetry.read.lazy_views import LazyViews
from telemetry.read.runs import match_run
from telemetry.read.small_files import SmallFiles
from telemetry.read.snapshot import Snapshot
from telemetry.read.views import (
    CHUNK_INCIDENTS_SQL,
    INCIDENT_KINDS,
    new_connection,
    run_source_sql,
    snapshot_spans,
)
from telemetry.store.errors import QueryError


class Archive(CurveQueries, LazyViews):
    """A flightlog archive opened for reading (local folder, s3://, memory://, http(s)://, ...)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        storage_options: dict | None = None,
        recover: Callable[..., Any] | None = None,
        cache_dir: str | None = None,
        cache_max_bytes: int | None = None,
    ):
        """`recover(url, storage_options=...)`, when given, runs before the first scan of a listable
        archive this process may write to (telemetry.Archive hands in telemetry.maintain.recovery.recover).
        `cache_dir`, `cache_max_bytes`: where a remote archive's files are cached and how many bytes the
        cache may hold (default $FLIGHTLOG_CACHE_MAX_BYTES, else 2 GiB; least recently used go first)."""
        self._catalog = Catalog(url, storage_options=storage_options, cache_dir=cache_dir,
                                cache_max_bytes=cache_max_bytes, lazy=True)
        self.url = self._catalog.url
        self.info = self._catalog.check_exists_and_version()
        self._problems: list[str] = []
        self.recovery: Any = None  # the last recovery's report
        # recovery runs before a scan, for the runs scanned (lazy_views.py): not at all on a store that
        # cannot list or a local folder this process cannot write
        self._recover = recover if recover is not None and self._catalog.listable and (
            not self._catalog.local or os.access(self._catalog.root, os.W_OK)) else None
        self._recovered: frozenset[str] | None = frozenset()  # runs recovered so far; None: the whole archive
        self._storage_options = storage_options
        self._lock = threading.RLock()
        self._scan_lock = threading.Lock()  # one scan at a time (a lazy scan may start from any query)
        self._spans: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        self._ranges: dict[tuple, tuple[float, float] | None] = {}
        self._con = new_connection()
        self._small = SmallFiles(self._con)  # raw segments' rows kept in memory (small_files.py)
        self._built: set[str] = set()  # views created over the current snapshot
        self._snap = Snapshot(files={})
        self._tail_lods = tail_lod.TailLods()  # LODs this reader builds for runs not compacted yet (tail_lod.py)
        self._open_lazily()

    # -- state ------------------------------------------------------------------------------
    @property
    def local_root(self) -> str:
        """The local folder DuckDB reads: the archive itself, or its cache for remote archives."""
        return self._catalog.local_root

    def wait_background(self, timeout: float = 60.0) -> bool:
        """Wait for this reader's background work (a level of detail it builds for a run that is not
        compacted yet, after a slow curve); True when nothing is left running."""
        return self._tail_lods.wait(timeout)

    def close(self) -> None:
        self._tail_lods.close()
        self._con.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_aside_broken(self, exc: Exception) -> None:
        """A query failed reading data: find the file broken past its footer (a corrupt page fails
        every query over its table), leave it out of the views, and raise BrokenFileError naming it;
        `heals` runs the query method again. Returns when no broken file explains the error."""
        if not may_be_a_broken_file(exc):
            return
        snap = self._snap
        gone = [rel for rel, local in snap.local_paths() if local and not os.path.exists(local)]
        if gone:  # deleted since the snapshot (grace period over, a LOD rebuilt): look again, run again
            self.refresh()
            raise FilesGoneError(gone) from None
        found = self._catalog.find_broken(snap, str(exc))
        if found:
            self.refresh()
            raise BrokenFileError(found) from None

    # -- raw SQL ----------------------------------------------------------------------------
    @heals
    def sql(self, query: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
        """Run SQL over the archive's views (trusted callers: no sandbox). QueryError on failure."""
        cur = self._cursor(query)
        try:
            rel = cur.sql(query, params=params) if params else cur.sql(query)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as exc:
            self._set_aside_broken(exc)
            raise QueryError(f"query failed: {exc}") from None
        finally:
            cur.close()

    def _df(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        cur = self._cursor(query)
        try:
            return cur.execute(query, params or []).df()
        except duckdb.Error as exc:
            self._set_aside_broken(exc)
            raise QueryError(f"query failed: {exc}") from None
        finally:
            cur.close()

    # -- runs -------------------------------------------------------------------------------
    @heals
    def runs(self, run: str | None = None) -> pd.DataFrame:
        """One row per run: run_id, name, project, status, created_at, steps, tokens, attempts,
        ranks, last_loss, incidents (newest first). `run`: that run's row only, reading only its files."""
        kinds = ", ".join(curves.quote_str(k) for k in INCIDENT_KINDS)
        run_id = None if run is None else self.resolve_run(run)

        def src(table: str) -> str:  # one run's row reads only that run's files
            return table if run_id is None else self._run_source(table, run_id)
        metrics, runs, attempts, ranks, events = map(src, ("metrics", "runs", "attempts", "ranks", "events"))
        snap = self._whole() if run_id is None else self._scan_runs({run_id})
        files = [f for f in snap.files.get("metrics", []) if f.rows and run_id in (None, f.key.run_id)]
        spans = snapshot_spans(files)
        # per-run figures from the footers where they tell: a scan of every metric row took 0.5 s on a
        # 41 M-point archive, and this summary is the first query of most pages
        if spans is None:
            steps = f"SELECT run_id, max(step) AS steps FROM {metrics} GROUP BY run_id"
        elif spans:
            steps = "SELECT * FROM (VALUES " + ", ".join(
                f"({curves.quote_str(r)}, {max(hi for _, hi in by.values())})" for r, by in sorted(spans.items())
            ) + ") AS t(run_id, steps)"
        else:
            steps = "SELECT NULL::VARCHAR AS run_id, NULL::BIGINT AS steps WHERE false"
        ranked = set(self._df(f"SELECT DISTINCT run_id FROM {ranks}")["run_id"])
        unranked = sorted({f.key.run_id for f in files} - ranked)  # only these need max(rank) from metrics
        metric_ranks = (f"SELECT run_id, max(rank) + 1 AS metric_ranks FROM {metrics} WHERE run_id IN "
                        f"({', '.join(curves.quote_str(r) for r in unranked)}) GROUP BY run_id" if unranked else
                        "SELECT NULL::VARCHAR AS run_id, NULL::BIGINT AS metric_ranks WHERE false")
        metric_ids = ", ".join(f"({curves.quote_str(r)})" for r in sorted({f.key.run_id for f in files}))
        metric_ids_sql = (f"SELECT * FROM (VALUES {metric_ids}) AS t(run_id)" if metric_ids
                          else "SELECT NULL::VARCHAR AS run_id WHERE false")
        return self._df(f"""
WITH ids AS (
    SELECT run_id FROM {runs} UNION {metric_ids_sql} UNION SELECT DISTINCT run_id FROM {attempts}),
tok AS (
    SELECT run_id, max(value) AS tokens FROM {metrics} WHERE name = 'tokens_seen' AND isfinite(value) GROUP BY run_id),
m AS (
    SELECT s.run_id, s.steps, tok.tokens, mr.metric_ranks
    FROM ({steps}) s LEFT JOIN tok USING (run_id) LEFT JOIN ({metric_ranks}) mr USING (run_id)),
-- the run's loss, whatever tool named it (`loss`, `train/loss`, `lm loss`, ...): telemetry.read.series' rule
loss_name AS (
    SELECT run_id, first(name ORDER BY loss_rank, name) AS name FROM (
        SELECT DISTINCT run_id, name, {series.loss_rank_sql("name")} AS loss_rank FROM {metrics}
        WHERE contains(lower(name), 'loss')) WHERE loss_rank IS NOT NULL GROUP BY run_id),
last_step AS (SELECT run_id, max(step) AS step FROM {metrics} JOIN loss_name USING (run_id, name) GROUP BY run_id),
-- the journey's last loss: at the highest step, the latest attempt wins, then the lowest rank
ll AS (
    SELECT x.run_id, arg_max(x.value, x.attempt * 65536 - x.rank) AS last_loss
    FROM {metrics} x JOIN loss_name USING (run_id, name) JOIN last_step USING (run_id, step) GROUP BY x.run_id),
a AS (SELECT run_id, count(*) AS attempts FROM {attempts} GROUP BY run_id),
k AS (SELECT run_id, count(DISTINCT rank) AS ranks FROM {ranks} GROUP BY run_id),
e AS (SELECT run_id, count(*) AS incidents FROM {events} WHERE kind IN ({kinds}) GROUP BY run_id)
SELECT ids.run_id, r.name, r.project, r.status, r.created_at, m.steps, m.tokens,
       coalesce(a.attempts, 0) AS attempts, coalesce(k.ranks, m.metric_ranks, 0) AS ranks,
       ll.last_loss, coalesce(e.incidents, 0) AS incidents
FROM ids LEFT JOIN {runs} r USING (run_id) LEFT JOIN m USING (run_id) LEFT JOIN ll USING (run_id)
LEFT JOIN a USING (run_id) LEFT JOIN k USING (run_id) LEFT JOIN e USING (run_id)
ORDER BY r.created_at DESC NULLS LAST, ids.run_id
""")

    @heals
    def resolve_run(self, run: str) -> str:
        """A run's name or id -> its run_id; UnknownRunError (listing known runs) otherwise."""
        run = str(run)
        # fast path: an id the archive's folders name, with metric rows (the query below reads every run)
        scope = self._snap.scope
        if scope is None or run in scope or run in self._listed_runs():
            snap = self._scan_runs({run})
            if any(f.key.run_id == run and f.rows for f in snap.files.get("metrics", [])):
                return run
        # runs named in `runs`, and runs with metric rows (their files' paths say which: no metric is read)
        known: dict[str, str | None] = {f.key.run_id: None for f in self._snap.files.get("metrics", []) if f.rows}
        for rid, name in self._df("SELECT run_id, name FROM runs").itertuples(index=False):
            if name is not None and not (isinstance(name, float) and math.isnan(name)):
                known[rid] = name
            else:
                known.setdefault(rid, None)
        return match_run(run, known, where=self.url)

    def _run_files(self, table: str, run_id: str) -> list[LiveFile]:
        return [f for f in self._scan_runs({run_id}).files.get(table, []) if f.key.run_id == run_id]

    def _run_source(self, table: str, run_id: str) -> str:
        """The table's rows of one run as its view shows them, reading only that run's files."""
        return f"({run_source_sql(table, self._local_run_files(table, run_id), self._small.source_sql)})"

    @heals
    def metric_names(self, run: str) -> list[str]:
        run_id = self.resolve_run(run)
        files = self._local_run_files("metrics", run_id)
        info = self._local_lod(self._snap.lod.get(run_id))
        covered = set(info.covers) if info is not None else set()
        # the LOD names every metric of the files it covers, unless the journey filter (several
        # attempts) or its step >= 0 rule left a name out: then read only the others' name column
        if info is not None and info.local and len(info.spans) <= 1 and all(
                f.step_range is not None and f.step_range[0] >= 0 for f in files if f.rel in covered and f.rows):
            tail = [f for f in files if f.rel not in covered]
            src = curves.read_parquet_sql([info.local])
            sql = f"SELECT DISTINCT name FROM {src} WHERE width = {int(info.widths[-1])}"
            if tail:
                sql += f" UNION SELECT DISTINCT name FROM ({self._small.source_sql('metrics', tail)})"
            return sorted(self._df(sql)["name"])
        df = self._df(f"SELECT DISTINCT name FROM {self._run_source('metrics', run_id)} ORDER BY name")
        return list(df["name"])

    # -- journey ----------------------------------------------------------------------------
    @heals
    def attempt_spans(self, run: str) -> dict[int, tuple[int, int]]:
        """{attempt: (min step, max step)} over all metrics of the run (footer stats when possible)."""
        run_id = self.resolve_run(run)
        key = (self._snap.run_version(run_id), run_id)
        cached = self._spans.get(key)
        if cached is not None:
            return cached
        files = self._run_files("metrics", run_id)
        spans: dict[int, tuple[int, int]] = {}
        if all((f.key.kind == "segment" and f.step_range is not None)
               or (f.key.kind == "compact" and f.attempt_spans is not None) for f in files):
            for f in files:
                if f.rows == 0:
                    continue
                found = f.attempt_spans if f.key.kind == "compact" else ((int(f.key.attempt), *f.step_range),)
                for a, lo, hi in found:  # type: ignore[union-attr, misc]
                    old = spans.get(a)
                    spans[a] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        else:
            source = self._run_source("metrics", run_id)
            df = self._df(f"SELECT attempt, min(step) AS lo, max(step) AS hi FROM {source} GROUP BY attempt")
            spans = {int(r.attempt): (int(r.lo), int(r.hi)) for r in df.itertuples()}
        self._spans[key] = spans
        return spans

    def _where(self, run_id: str, *, rank: int | None, attempt: int | None, journey: bool) -> list[str]:
        where = []
        if rank is not None:
            where.append(f"rank = {int(rank)}")
        if attempt is not None:
            where.append(f"attempt = {int(attempt)}")
        elif journey:
            pred = curves.journey_predicate(self.attempt_spans(run_id))
            if pred != "TRUE":
                where.append(pred)
        return where

    @heals
    def metrics(
        self,
        run: str,
        names: Sequence[str] | str | None = None,
        *,
        lo: int | None = None,
        hi: int | None = None,
        rank: int | None = None,
        attempt: int | None = None,
        journey: bool = True,
    ) -> pd.DataFrame:
        """Raw metric rows of a run (long format), ordered by name, step, rank."""
        run_id = self.resolve_run(run)
        where = self._where(run_id, rank=rank, attempt=attempt, journey=journey)
        cond, params = _filter_sql(where, "name", names, lo, hi)
        source = self._run_source("metrics", run_id)
        return self._df(f"SELECT * FROM {source} WHERE {cond} ORDER BY name, step, attempt, rank", params)

    @heals
    def events(
        self,
        run: str | None = None,
        kinds: Sequence[str] | str | None = None,
        lo: int | None = None,
        hi: int | None = None,
    ) -> pd.DataFrame:
        """Events (of one run, of some kinds, in a step range), ordered by step, then wall time and rank."""
        source = "events" if run is None else self._run_source("events", self.resolve_run(run))
        cond, params = _filter_sql([], "kind", kinds, lo, hi)
        return self._df(f"SELECT * FROM {source} WHERE {cond} ORDER BY step NULLS LAST, wall_time, rank", params)

    @heals
    def incidents(self, run: str | None = None) -> pd.DataFrame:
        """Incident events with their data chunk and the attempt's seed."""
        if run is None:
            return self._df("SELECT * FROM incidents ORDER BY run_id, step NULLS LAST, attempt")
        return self._df("SELECT * FROM incidents WHERE run_id = ? ORDER BY step NULLS LAST, attempt",
                        [self.resolve_run(run)])

    @heals
    def chunk_incidents(self, run: str | None = None) -> pd.DataFrame:
        """Incidents per data chunk across attempts and seeds: a chunk failing in every order stands out."""
        if run is None:
            return self._df("SELECT * FROM chunk_incidents ORDER BY n_incidents DESC, data_chunk")
        sql = CHUNK_INCIDENTS_SQL.replace("WHERE data_chunk IS NOT NULL", "WHERE data_chunk IS NOT NULL AND run_id = ?")
        return self._df(f"{sql} ORDER BY n_attempts DESC, n_incidents DESC, data_chunk", [self.resolve_run(run)])

    @heals
    def attempt_lineage(self, run: str) -> pd.DataFrame:
        """Per attempt: first/last step, where it resumed from, how it ended, and its abandoned steps."""
        run_id = self.resolve_run(run)
        spans = self.attempt_spans(run_id)
        pred = curves.journey_predicate(spans)
        return self._df(f"""
WITH m AS (SELECT attempt, step, {pred} AS kept FROM {self._run_source('metrics', run_id)}),
s AS (SELECT attempt, min(step) AS first_step, max(step) AS last_step,
             count(DISTINCT step) FILTER (WHERE NOT kept) AS abandoned_steps FROM m GROUP BY attempt),
a AS (SELECT attempt, resumed_from_step, resumed_from_checkpoint, end_status, started_at, ended_at, seed, reason
      FROM {self._run_source('attempts', run_id)} WHERE run_id = ?)
SELECT coalesce(a.attempt, s.attempt) AS attempt, s.first_step, s.last_step, a.resumed_from_step, a.end_status,
       coalesce(s.abandoned_steps, 0) AS abandoned_steps, a.resumed_from_checkpoint, a.started_at, a.ended_at,
       a.seed, a.reason
FROM s FULL JOIN a ON a.attempt = s.attempt
ORDER BY 1
""", [run_id])


def _filter_sql(where: list[str], column: str, values: Sequence[str] | str | None, lo: int | None, hi: int | None
                ) -> tuple[str, list[Any]]:
    """(WHERE condition, parameters): `where` and `column` IN `values` (one str is one value; None: any)
    and step in [lo, hi] (None: open); the values are parameters, the steps whole numbers."""
    where, params = list(where), []
    if values is not None:
        values = [values] if isinstance(values, str) else list(values)
        where.append(f"{column} IN ({', '.join('?' for _ in values)})")
        params += values
    if lo is not None:
        where.append(f"step >= {int(lo)}")
    if hi is not None:
        where.append(f"step <= {int(hi)}")
    return " AND ".join(where) or "TRUE", params
