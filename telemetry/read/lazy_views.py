"""How an Archive's queries get their views and files: views built when a query first names them (over
the current snapshot, rebuilt after it changed), and a remote archive's files copied into the bounded
local cache only when a query reads them (telemetry.read.remote_cache)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from telemetry.read.catalog import Snapshot
from telemetry.read.footers import LiveFile
from telemetry.read.remote_cache import FileCache
from telemetry.read.views import VIEW_PARTS, create_views, view_tables, views_named_in, with_parts


class LazyViews:
    """The view and file methods of `telemetry.read.archive.Archive` (a mixin: it uses the Archive's
    `_catalog`, `_snap`, `_con`, `_built`, `_lock`, `refresh` and `_run_files`)."""

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection with every view of the archive (built now if not yet)."""
        self._views(VIEW_PARTS)
        return self._con

    @property
    def cache(self) -> FileCache | None:
        """The local cache of a remote archive's files (None for a local archive)."""
        return self._catalog.cache

    def local_files(self, rels: Sequence[str]) -> list[str]:
        """Copy these live files into the local cache (remote archives) before DuckDB reads them;
        a file that cannot be copied is left out of the snapshot (refreshed) and of the list returned."""
        failed = self._catalog.ensure_local(rels)
        if failed:
            self.refresh()
        return [r for r in rels if r not in failed]

    def local_snapshot(self) -> Snapshot:
        """The snapshot with every live file copied locally: for DuckDB connections of their own (the SQL
        sandbox) and for copying files (publish). Nothing to copy for a local archive."""
        while self._catalog.cache is not None:
            snap = self._snap
            rels = [f.rel for f in snap.all_files()] + [i.rel for i in snap.lod.values()]
            if len(self.local_files(rels)) == len(rels):
                break
        return self._snap

    def _views(self, names: Any) -> None:
        """Create the views `names` and their parts over the current snapshot, the files they read
        copied locally first (remote archives)."""
        while True:
            snap = self._snap
            wanted = with_parts(names)
            tables = view_tables(wanted)
            rels = [f.rel for t in tables for f in snap.files.get(t, [])]
            if "metrics_lod" in wanted:
                rels += [i.rel for i in snap.lod.values()]
            if len(self.local_files(rels)) == len(rels):
                break
        with self._lock:
            missing = [n for n in wanted if n not in self._built]
            if missing:
                self._built.update(create_views(self._con, self._snap, missing))

    def _cursor(self, sql: str = "") -> duckdb.DuckDBPyConnection:
        """A cursor on which the views `sql` names exist."""
        if sql:
            self._views(views_named_in(sql))
        with self._lock:
            return self._con.cursor()

    def _local_run_files(self, table: str, run_id: str) -> list[LiveFile]:
        """The run's files of `table`, copied locally first (remote archives)."""
        while True:
            files = self._run_files(table, run_id)
            if len(self.local_files([f.rel for f in files])) == len(files):
                return files

    def _local_lod(self, info: Any) -> Any:
        """A persisted LOD's info once its file is local (None if it cannot be copied)."""
        if info is None or info is not self._snap.lod.get(info.run_id):
            return info  # None, or one this reader built in a local temp file (tail_lod.py)
        return info if self.local_files([info.rel]) else None

