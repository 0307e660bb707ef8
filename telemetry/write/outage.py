"""Storage outages: every write of the flush thread goes through here, and no failure reaches the caller.

A store that refuses a write (network, throttling, auth, full disk, read-only folder) is counted,
logged once a minute and retried with exponential backoff (0.25 s doubling up to `max_backoff_s`).
Batches it refused are kept: on a local spool folder (remote archives, telemetry.write.spool;
the memory is freed) or in memory (local archives, whose disk is likely the spool's disk too),
each within a byte bound beyond which they are dropped and counted. The `runs`/`attempts`/`ranks`
rows are tiny and tell the run's story, so they are held whatever the bound. Once the store answers
again the backlog is written oldest first and two events say what happened: `storage_error`
(warning: when it broke, the first error) and `storage_recovered` (info: how long, what was
spooled, held or dropped).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from data_schema.layout import join
from telemetry.store import staging
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import atomic_write_bytes, is_local
from telemetry.write.config import WriterConfig
from telemetry.write.once_log import log
from telemetry.write.record_batches import json_text
from telemetry.write.spool import Spool, archive_key, default_spool_root

# State rows are tiny and tell the run's story (running, crashed, which ranks): never dropped.
_STATE_TABLES = frozenset({"runs", "attempts", "ranks"})


@dataclass(slots=True)
class Batch:
    """One table's records of one flush cycle, from the queue until its rows are in a segment."""

    seq: int
    data: pa.Table | None  # staged schema (no constant columns); None while it waits in the spool
    rows: int
    nbytes: int
    staged: bool = False   # in the archive's _staging/
    spooled: bool = False  # its staged bytes are in the local spool (until its rows are in a segment)
    held: bool = False     # kept in memory while storage fails (counts against backlog_max_bytes)


@dataclass(slots=True)
class OutageCost:
    """What one storage outage cost, for the events written once storage is back."""

    spooled_batches: int = 0
    held_batches: int = 0
    dropped_records: int = 0


def make_spool(cfg: WriterConfig, fs: fsspec.AbstractFileSystem, root: str) -> Spool | None:
    folder = cfg.spool_dir
    if folder == "" or (folder is None and is_local(fs)):
        return None  # a local archive's disk is likely the spool's disk too: hold in memory instead
    spool_root = os.fspath(folder) if folder is not None else default_spool_root()
    return Spool(spool_root, archive_key(fs, root), cfg.spool_max_bytes)


class StorageGuard:
    """One writer's writes to its archive, with the failures, backoff and kept batches of an outage."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, cfg: WriterConfig, *, run_id: str,
                 attempt: int, rank: int, warn: Callable[[str, str], None]) -> None:
        self.fs, self.root, self.cfg = fs, root, cfg
        self._consts = {"run_id": run_id, "attempt": attempt, "rank": rank}  # a staged file's metadata
        self._warn = warn
        self.spool = make_spool(cfg, fs, root)
        self.failures = 0            # failed writes since storage last worked
        self.first_failure: tuple[float, str] | None = None  # (Unix time, what failed) of this outage
        self.backoff = 0.0           # seconds before the next try; 0 while storage works
        self.backlog_bytes = 0       # bytes of batches held in memory while storage fails
        self.cost = OutageCost()
        self.dropped = 0             # records dropped because storage failed and every bound was full
        self.dropped_reported = 0    # ... of which a `dropped_records` event has told

    # ---- writes ------------------------------------------------------------------------------

    def store(self, path: str, data: pa.Buffer | bytes, what: str, fsync: bool = True) -> bool:
        try:
            atomic_write_bytes(self.fs, path, memoryview(data), fsync=fsync)
            return True
        except Exception as exc:  # noqa: BLE001 - storage errors never reach the caller: counted and logged
            self.failed(what, exc)
            return False

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = (time.time(), f"{what}: {exc!r}")
        self._warn("storage", f"flightlog: cannot write to archive {self.root!r} ({what}: {exc!r}); "
                   "keeping data in memory and retrying")

    def end_cycle(self, ok: bool) -> None:
        """After a flush cycle: retry at once while storage keeps up, else back off exponentially."""
        self.backoff = 0.0 if ok else min(self.cfg.max_backoff_s, max(0.25, self.backoff * 2))

    # ---- batches the store refused -------------------------------------------------------------

    def staged_bytes(self, b: Batch, rel: str) -> pa.Buffer | bytes | None:
        """The bytes to stage for `b`: encoded now, or read back from the spool (None: lost)."""
        if not b.spooled:
            if b.data is None:
                return None
            return staging.encode_staged(b.data, **self._consts)
        try:
            return self.spool.get(rel)
        except OSError as exc:  # the local spool lost it (disk error, someone cleaned /tmp): lost, counted
            self._warn("spool-read", f"flightlog: cannot read spooled batch {rel!r}: {exc!r}")
            self.spool.discard(rel)
            b.spooled = False
            return None

    def mark_staged(self, b: Batch) -> None:
        b.staged = True
        if b.held:
            b.held = False
            self.backlog_bytes -= b.nbytes

    def hold(self, table: str, b: Batch, rel: str, payload: pa.Buffer | bytes | None) -> bool:
        """Keep a batch the store refused: on the local spool (memory freed), else in memory, within bounds."""
        if b.spooled or b.held:
            return True
        if b.data is None:
            return False
        if self.spool is not None:
            if payload is None:
                payload = staging.encode_staged(b.data, **self._consts)
            if self.spool.put(rel, memoryview(payload)):
                b.spooled, b.data = True, None
                self.cost.spooled_batches += 1
                return True
        if table in _STATE_TABLES or self.backlog_bytes + b.nbytes <= self.cfg.backlog_max_bytes:
            b.held = True
            self.backlog_bytes += b.nbytes
            self.cost.held_batches += 1
            return True
        return False

    def drop(self, table: str, b: Batch, rel: str) -> None:
        """Give up a batch no bound has room for: counted here (the writer adds it to `dropped`)."""
        self.dropped += b.rows
        self.cost.dropped_records += b.rows
        if b.spooled:
            self.spool.discard(rel)
        self._warn("storage-drop", f"flightlog: storage is failing and the spool/backlog bounds are full: "
                   f"dropped {b.rows} {table} record(s) (counted, reported as `dropped_records`)")

    def batch_data(self, table: str, b: Batch, rel: str) -> pa.Table:
        """A staged batch's rows; a spooled one is read back from the spool, else from _staging/."""
        if b.data is not None:
            return b.data
        try:
            raw = self.spool.get(rel)
        except OSError:  # not (or no longer) spooled: its staged file in the archive has the same bytes
            raw = self.fs.cat_file(join(self.root, rel))
        dec = staging.decode_staged(raw, table)
        if dec.data is None or dec.truncated:
            raise ArchiveError(f"staged batch {rel!r} cannot be read back")
        return dec.data

    # ---- the end of an outage -------------------------------------------------------------------

    def recovered_events(self) -> list[tuple[str, dict]]:
        """Two events once storage works again: when it broke (warning) and what the outage cost (info)."""
        first_t, first_msg = self.first_failure or (time.time(), "")
        n, out = self.failures, self.cost
        self.failures, self.first_failure, self.cost = 0, None, OutageCost()
        now = time.time()
        details = json_text({"failures": n, "first_error": first_msg, "outage_s": round(now - first_t, 3),
                             "spooled_batches": out.spooled_batches, "held_batches": out.held_batches,
                             "dropped_records": out.dropped_records,
                             "spool": self.spool.folder if self.spool is not None and out.spooled_batches else None})
        kept = ("nothing was lost" if not out.dropped_records
                else f"{out.dropped_records} record(s) were dropped (bounds full)")
        log.warning("flightlog: archive storage works again after %d failure(s) over %.1fs", n, now - first_t)
        return [
            ("events", {
                "kind": "storage_error", "severity": "warning", "wall_time": first_t,
                "message": f"archive storage failed {n} time(s) for {now - first_t:.1f}s ({first_msg:.200}); "
                           "data was kept and written once storage came back",
                "details_json": details,
            }),
            ("events", {
                "kind": "storage_recovered", "severity": "info", "wall_time": now,
                "message": f"archive storage works again after {now - first_t:.1f}s: {out.spooled_batches} "
                           f"batch(es) spooled on local disk and {out.held_batches} held in memory were written; "
                           f"{kept}",
                "details_json": details,
            }),
        ]


def drop_reason(total: int, by_storage: int) -> str:
    queue, storage = "the writer queue was full", "storage failed and the spool and backlog bounds were full"
    if by_storage == 0:
        return queue
    if by_storage == total:
        return storage
    return f"{total - by_storage} because {queue}, {by_storage} because {storage}"
