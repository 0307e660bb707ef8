"""How an Archive's queries get their snapshot, views and files, each only when a query needs it.

A listable archive opens without listing its files: a query about one run (a curve, its metrics, its
attempts) scans that run alone (telemetry.read.catalog, `scan(runs=...)`: a few listings of its folders
and its index), so drawing one run of an archive of 1,000 costs what that run costs. Whatever needs
every run (`runs()`, SQL over the views, `snapshot`, `version`, `problems`) scans the whole archive
once; `refresh()` scans again what was scanned. Views are built when a query first names them (over the
whole snapshot, rebuilt after it changed), and a remote archive's files are copied into the bounded
local cache only when a query reads them (telemetry.read.remote_cache). An archive that cannot be
listed (http) is scanned whole at open: its manifest is one file, and the only listing it has.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import duckdb

from data_schema import TABLES
from telemetry.read.footers import LiveFile
from telemetry.read.remote_cache import FileCache
from telemetry.read.snapshot import Snapshot
from telemetry.read.views import VIEW_PARTS, create_views, view_tables, views_named_in, with_parts


class LazyViews:
    """The snapshot, view and file methods of `telemetry.read.archive.Archive` (a mixin: it uses the
    Archive's `_catalog`, `_snap`, `_problems`, `_con`, `_built`, `_lock`, `_scan_lock`, `_spans`,
    `_ranges`, `_small`, `_recover`, `_recovered` and `_run_files`)."""

    # -- the snapshot: whole, or of the runs queries touched -----------------------------------------
    def _open_lazily(self) -> None:
        """Start with a snapshot of no run (listable stores) or of the whole archive (see the docstring)."""
        self._run_ids: set[str] | None = None  # the runs the archive's folders name, listed when first needed
        if self._catalog.listable:
            self._install(Snapshot(files={t: [] for t in TABLES}, scope=frozenset(),
                                   problems=list(self._catalog.root_problems)))
        else:
            self.refresh()

    @property
    def snapshot(self) -> Snapshot:
        """The live files of the whole archive (scanned now if only some runs were)."""
        return self._whole()

    @property
    def scanned_files(self) -> int:
        """Live files this reader has scanned so far (the runs queries touched, or the whole archive)."""
        return len(self._snap.all_files())

    @property
    def version(self) -> str:
        """Hash of the archive's live file list: changes whenever a file appears or goes."""
        return self._whole().version

    @property
    def problems(self) -> list[str]:
        """What is wrong in the archive (files skipped, a failed recovery, ...), after a whole scan."""
        self._whole()
        return self._problems

    def refresh(self) -> bool:
        """Scan again what was scanned (the whole archive, or the runs queries touched), reading only
        new footers; True when the live files changed, and then the views are rebuilt when next used."""
        with self._scan_lock:
            self._run_ids = None
            return self._install(self._catalog.scan(self._snap.scope))

    def _install(self, snap: Snapshot) -> bool:
        with self._lock:
            changed = snap.version != self._snap.version or not self._snap.files
            self._snap = snap
            self._problems[:] = [p for p in self._problems if p.startswith("recovery")] + snap.problems
            self._small.retire(f.local for f in snap.all_files())
            if changed:
                self._built.clear()
                self._spans.clear()
                self._ranges.clear()
        return changed

    def _whole(self) -> Snapshot:
        """The snapshot, scanned whole first if it covers only some runs."""
        if self._snap.scope is not None:
            with self._scan_lock:
                if self._snap.scope is not None:
                    self._recover_first(None)
                    self._install(self._catalog.scan())
        return self._snap

    def _scan_runs(self, runs: Collection[str]) -> Snapshot:
        """The snapshot, covering these runs (scanned now, with those scanned before, if it does not)."""
        snap = self._snap
        if all(snap.covers(r) for r in runs):
            return snap
        with self._scan_lock:
            snap = self._snap
            if not all(snap.covers(r) for r in runs):
                self._recover_first(frozenset(runs))
                self._install(self._catalog.scan(snap.scope | frozenset(runs)))  # type: ignore[operator]
            return self._snap

    def _recover_first(self, runs: frozenset[str] | None) -> None:
        """Recover crashed writers' staged batches of these runs (None: of the archive) once, before they
        are scanned: a reader of one run recovers that run, not the archive."""
        done = self._recovered
        if self._recover is None or done is None or (runs is not None and runs <= done):
            return
        todo = None if runs is None else runs - done
        try:
            if todo is None:
                self.recovery = self._recover(self.url, storage_options=self._storage_options)
            else:
                self.recovery = self._recover(self.url, storage_options=self._storage_options, runs=todo)
        except Exception as exc:  # noqa: BLE001 - a failed recovery must not stop reading; it is reported
            self._problems.append(f"recovery failed: {exc}")
        self._recovered = None if todo is None else done | todo

    def _listed_runs(self) -> set[str]:
        """The run ids the archive's folders name (listed once per refresh)."""
        if self._run_ids is None:
            self._run_ids = self._catalog.run_ids()
        return self._run_ids

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
        self._whole()
        while self._catalog.cache is not None:
            snap = self._snap
            rels = [f.rel for f in snap.all_files()] + [i.rel for i in snap.lod.values()]
            if len(self.local_files(rels)) == len(rels):
                break
        return self._snap

    def _views(self, names: Any) -> None:
        """Create the views `names` and their parts over the current snapshot, the files they read
        copied locally first (remote archives)."""
        wanted = with_parts(names)
        if not wanted:
            return  # a query over one run's files names no view: no whole scan for it
        while True:
            snap = self._whole()
            tables = view_tables(wanted)
            rels = [f.rel for t in tables for f in snap.files.get(t, [])]
            if "metrics_lod" in wanted:
                rels += [i.rel for i in snap.lod.values()]
            if len(self.local_files(rels)) == len(rels):
                break
        with self._lock:
            missing = [n for n in wanted if n not in self._built]
            if missing:
                self._built.update(create_views(self._con, self._snap, missing, self._small.source_sql))

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

