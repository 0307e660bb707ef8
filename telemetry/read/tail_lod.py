"""Level-of-detail tables for runs that are not compacted yet, built in memory by the reader.

A run gets its persisted LOD (telemetry.read.lod) when it is compacted, which the writer does on
close. Until then (a live run, or a crashed run recovered but not compacted) every `curve()`
scanned all of the run's raw rows: about 120 ms for 10 M points, each time. Once such a scan
took longer than `MIN_SCAN_S`, the Archive asks for the same LOD table to be built over the
run's current segments, in a background thread, into a temporary file of this process. Later
curves read it like a persisted LOD, and segments written since are read raw as its tail.

It is used only while every file it covers is still live: compaction replaces segments, and a
LOD over replaced files would count their rows twice, so it is dropped then (the compacted run
has its own LOD). Journey changes (a new attempt overriding steps) are handled as for a
persisted LOD: `lod.valid_below` limits it to the steps it still summarises correctly.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq

from telemetry.read import lod

_log = logging.getLogger("flightlog.archive")

MIN_SCAN_S = 0.05
"""A raw curve scan slower than this makes the run worth a LOD (small runs are read raw)."""


REBUILD_ROWS = 1_000_000
BUILD_MEMORY_LIMIT = "1GB"

# Builds still running when the interpreter exits are interrupted and joined first: a daemon thread
# inside DuckDB when Python finalizes aborts the whole process.
_instances: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_builds() -> None:
    for t in list(_instances):
        t.close()
        t.wait(10.0)


def worth_rebuilding(covered: Sequence[Any], tail: Sequence[Any]) -> bool:
    """Rows written after the LOD was built (read raw by every curve) outweigh a rebuild."""
    tail_rows = sum(f.rows for f in tail)
    return tail_rows > max(REBUILD_ROWS, sum(f.rows for f in covered) // 4)


class TailLods:
    """The in-memory LODs of one Archive: at most one per run, built one at a time in the background."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._infos: dict[str, lod.LodInfo] = {}
        self._thread: threading.Thread | None = None
        self._dir: str | None = None
        self._finalizer: Any = None
        self._closed = False
        self._con: Any = None  # the running build's DuckDB connection, to interrupt it
        _instances.add(self)

    def get(self, run_id: str, files: Sequence[Any]) -> lod.LodInfo | None:
        """The run's LOD when every file it covers is among `files` (the run's live metric files)."""
        info = self._infos.get(run_id)
        if info is None:
            return None
        if not set(info.covers) <= {f.rel for f in files}:
            with self._lock:
                if self._infos.get(run_id) is info:
                    del self._infos[run_id]
            return None  # its file stays until close: a query on another thread may be reading it
        return info

    def want(self, run_id: str, files: Sequence[Any]) -> None:
        """Build a LOD over `files` (LiveFile of the run's metrics) unless one covers them already."""
        rels = tuple(sorted(f.rel for f in files))
        if not rels:
            return
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return  # one build at a time; the next slow scan asks again
            current = self._infos.get(run_id)
            if current is not None and current.covers == rels:
                return
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="flightlog-tail-lod-")
                self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
            self._thread = threading.Thread(target=self._build, args=(run_id, rels, [f.local for f in files]),
                                            name="flightlog-tail-lod", daemon=True)
            self._thread.start()

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait for a build in progress (tests and benchmarks); True when none is running."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return t is None or not t.is_alive()

    def close(self) -> None:
        """Forget the LODs and remove their files; a build in progress is abandoned, not waited for."""
        with self._lock:
            self._closed = True
            self._infos.clear()
            con = self._con
        if con is not None:
            try:
                con.interrupt()
            except Exception:  # noqa: BLE001 - already closed
                pass
        if self._finalizer is not None:
            self._finalizer()

    def _build(self, run_id: str, rels: tuple[str, ...], paths: list[str]) -> None:
        try:
            spans = lod.spans_of(paths)
            with self._lock:
                if self._closed:
                    return
                self._con = con = lod.connect()
            # A background job beside the reader's own queries: one thread, bounded memory (spilling
            # into this reader's temporary folder), so a huge live run cannot take the machine.
            con.execute("SET threads = 1")
            con.execute(f"SET memory_limit = '{BUILD_MEMORY_LIMIT}'")
            con.execute(f"SET temp_directory = '{os.path.join(self._dir, 'spill')}'")
            try:
                table, ranks = lod.build_lod_table(run_id, paths, spans, lod.DEFAULT_WIDTHS, con=con)
            finally:
                with self._lock:
                    self._con = None
            path = os.path.join(self._dir, f"{len(os.listdir(self._dir))}.parquet")
            pq.write_table(table, path, row_group_size=lod.ROW_GROUP_ROWS, compression="zstd", compression_level=1)
            info = lod.LodInfo(rel=f"(in memory) {path}", run_id=run_id, covers=rels, spans=spans,
                               widths=tuple(lod.DEFAULT_WIDTHS), ranks=tuple(ranks), per_rank=len(ranks) > 1,
                               created_at=dt.datetime.now(dt.UTC).isoformat(), rows=table.num_rows, local=path)
        except Exception as exc:  # noqa: BLE001 - a failed build only means curves keep scanning raw rows
            _log.info("flightlog: no level of detail for run %s's segments (%s); curves read raw rows", run_id, exc)
            return
        with self._lock:
            if not self._closed:
                self._infos[run_id] = info  # a replaced one's file stays until close (see get)
