"""Small files kept in memory: the rows of a run's raw segments (and a live view's staged copies), read once
into an in-memory DuckDB table per archive table, so that a query over a live run costs its new files, not
all of its small files.

A live 1,024-rank run holds a thousand or more raw segments between compactions (one per rank per
interval). DuckDB opens every file of a `read_parquet` list at each query: ~0.25 ms a file here, 0.7 s for
3,000 files, while the same rows in an in-memory table answer in ~10 ms. Segments are immutable, so each
file's rows are read once (keyed by the local path the catalog gives it, which changes with its size or
content only through a new name) and kept until the file leaves the snapshot (compacted away).

Kept: a table's segment or staged files of at most MAX_FILE_BYTES whose columns all belong to the table's
schema, within MAX_TOTAL_BYTES of Parquet in all, once a query reads at least MIN_FILES of them (a few
files are read as files: nothing to gain). Everything else is read from its file, as before; a batch
DuckDB cannot load is read from its files too.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Sequence

import duckdb

from data_schema import schema
from telemetry.read import curves
from telemetry.read.footers import LiveFile, one_line
from telemetry.read.views import duck_type, qident, table_source_sql

log = logging.getLogger(__name__)

MIN_FILES = 16
MAX_FILE_BYTES = 4 << 20  # a raw segment of a 60 s interval is far smaller; a compact file is read as a file
MAX_TOTAL_BYTES = 512 << 20  # of Parquet (in memory a few times that): beyond it, files are read as files
FILE_COLUMN = "_file"


class SmallFiles:
    """The in-memory rows of small files for one DuckDB connection (see the module docstring)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, max_total_bytes: int | None = None):
        self._con = con
        self._lock = threading.Lock()
        self._max_total = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
        self._loaded: dict[str, tuple[str, int]] = {}  # local path -> (table, size)
        self._by_table: dict[str, set[str]] = {}
        self._refused: set[str] = set()  # files DuckDB could not load into the table: read as files
        self._bytes = 0
        self._stale: set[str] = set()  # left the snapshot at the last install: dropped at the next
        self._leftovers: set[str] = set()  # tables holding rows of dropped files (a DELETE failed)
        self.files_loaded = 0

    def source_sql(self, table: str, files: Sequence[LiveFile]) -> str:
        """SELECT of the table's rows over exactly these files, the small ones from memory."""
        small = [f for f in files if self._fits(table, f)]
        if len(small) < MIN_FILES:
            return table_source_sql(table, files)
        kept = self._load(table, small)
        if not kept:
            return table_source_sql(table, files)
        kept_paths = {f.local for f in kept}
        rest = [f for f in files if f.local not in kept_paths]
        cols = ", ".join(qident(f.name) for f in schema(table))
        memory = f"SELECT {cols} FROM {_table_name(table)}"
        with self._lock:
            extra = self._by_table.get(table, set()) - kept_paths  # another run's, or files on their way out
            leftovers = table in self._leftovers
        if leftovers or len(extra) > len(kept_paths):
            memory += f" WHERE {FILE_COLUMN} IN ({', '.join(curves.quote_str(p) for p in sorted(kept_paths))})"
        elif extra:  # the shorter list: a refresh leaves the files that just left in memory one install longer
            memory += f" WHERE {FILE_COLUMN} NOT IN ({', '.join(curves.quote_str(p) for p in sorted(extra))})"
        if not rest:
            return memory
        return f"SELECT * FROM ({table_source_sql(table, rest)}) UNION ALL BY NAME {memory}"

    def retire(self, live: Iterable[str]) -> None:
        """The snapshot changed: rows of files that left it one install ago are dropped (a query that began
        over the older snapshot may still be reading the files that left just now)."""
        live = set(live)
        with self._lock:
            drop = {p for p in self._stale if p not in live and p in self._loaded}
            self._stale = {p for p in self._loaded if p not in live} - drop
            self._drop(drop)

    def _drop(self, paths: Iterable[str]) -> None:
        by_table: dict[str, list[str]] = {}
        for path in paths:
            table, size = self._loaded.pop(path)
            self._bytes -= size
            self._by_table[table].discard(path)
            by_table.setdefault(table, []).append(path)
        for table, dropped in by_table.items():
            try:
                self._con.execute(f"DELETE FROM {_table_name(table)} WHERE {FILE_COLUMN} IN "
                                  f"({', '.join(curves.quote_str(p) for p in dropped)})")
            except duckdb.Error as exc:  # rows left behind: from now on queries name their files
                log.debug("cannot drop the rows of %d retired files: %s", len(dropped), one_line(exc))
                self._leftovers.add(table)

    def _fits(self, table: str, f: LiveFile) -> bool:
        return (f.key.kind in ("segment", "staged") and f.size is not None and f.size <= MAX_FILE_BYTES
                and bool(f.local) and f.local not in self._refused and set(f.columns) <= _columns(table))

    def _load(self, table: str, files: list[LiveFile]) -> list[LiveFile]:
        """Read the files not in memory yet into the table's memory table; the files now in memory."""
        with self._lock:
            changed = [f.local for f in files if f.local in self._loaded and self._loaded[f.local][1] != f.size]
            if changed:  # a path that now holds other bytes (never for a flightlog segment): read it again
                self._drop(changed)
            new = [f for f in files if f.local not in self._loaded]
            room = self._max_total - self._bytes
            take: list[LiveFile] = []
            for f in new:
                if f.size is not None and f.size <= room:
                    take.append(f)
                    room -= f.size
            if take:
                self._insert(table, take)
            return [f for f in files if f.local in self._loaded]

    def _insert(self, table: str, files: list[LiveFile]) -> None:
        name = _table_name(table)
        if table not in self._by_table:
            cols = ", ".join(f"{qident(f.name)} {duck_type(f.type)}" for f in schema(table))
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols}, {FILE_COLUMN} VARCHAR)")
            self._by_table[table] = set()
        by_columns: dict[tuple[str, ...], list[LiveFile]] = {}
        for f in files:  # files of one column set read without union_by_name: a third faster
            by_columns.setdefault(f.columns, []).append(f)
        sources = [curves.read_parquet_sql([f.local for f in group], union_by_name=False).replace(
            "hive_partitioning=false)", "hive_partitioning=false, filename=true)") for group in by_columns.values()]
        try:
            for src in sources:
                self._con.execute(f"INSERT INTO {name} BY NAME SELECT * EXCLUDE (filename), filename AS {FILE_COLUMN} "
                                  f"FROM {src}")
        except duckdb.Error as exc:
            log.debug("%d small files of %s read as files: %s", len(files), table, one_line(exc))
            self._refused.update(f.local for f in files)
            self._con.execute(f"DELETE FROM {name} WHERE {FILE_COLUMN} IN "
                              f"({', '.join(curves.quote_str(f.local) for f in files)})")
            return
        for f in files:
            self._loaded[f.local] = (table, int(f.size or 0))
            self._by_table[table].add(f.local)
            self._bytes += int(f.size or 0)
        self.files_loaded += len(files)


def _table_name(table: str) -> str:
    return qident(f"_small_{table}")


@functools.cache
def _columns(table: str) -> frozenset[str]:
    return frozenset(schema(table).names)
