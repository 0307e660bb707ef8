"""A writer's side of its lease (telemetry.store.lease): renew it, notice a takeover, move off a fenced group.

The flush thread renews the lease every cycle (a counter, so that observers need no clock of ours)
and asks `WriterLease.fenced` before a segment write and again after it. Once recovery has taken
the group over (took this writer for dead during a pause) the writer writes nothing more there:
`move_to_new_slot` leaves every batch it staged in the group to recovery, claims a fresh file slot
of the same attempt and rank (rows keep their rank; only file names change, as a forked child's
do), carries over the batches it never staged, and reports the takeover in a `storage_error` event.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import fsspec

from data_schema.layout import join
from telemetry.store import heartbeat, lease
from telemetry.store.fs import remove
from telemetry.write.once_log import log
from telemetry.write.record_batches import json_text

if TYPE_CHECKING:  # the flush thread whose group is moved (flusher.py imports this module)
    from telemetry.write.flusher import Flusher
    from telemetry.write.outage import StorageGuard

_MOVED_RANK_BASE = 20_000_000  # file-name slots of writers moved off a fenced group (forks use 10_000_000+)


class WriterLease:
    """The generation this writer holds on (run, attempt, file rank), and its renewal counter."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, run_id: str, attempt: int, file_rank: int,
                 flush_interval_s: float, *, generation: int | None = None) -> None:
        self._fs, self._root = fs, root
        self.run_id, self.attempt, self.file_rank = run_id, attempt, file_rank
        self.flush_interval_s = flush_interval_s
        self.renewals = 0
        if generation is None:
            try:
                generation = lease.highest_generation(fs, root, run_id, attempt, file_rank)
            except Exception as exc:  # noqa: BLE001 - storage errors never reach the caller; logged
                log.warning("flightlog: cannot read the lease generation of %s (%r); assuming 0",
                            heartbeat.group_name(run_id, attempt, file_rank), exc)
                generation = 0
        self.generation = generation

    def path(self) -> str:
        return join(self._root, heartbeat.heartbeat_path(self.run_id, self.attempt, self.file_rank))

    def body(self) -> bytes:
        self.renewals += 1
        return heartbeat.heartbeat_bytes(run_id=self.run_id, attempt=self.attempt, rank=self.file_rank,
                                         pid=os.getpid(), host=heartbeat.host_id(),
                                         flush_interval_s=self.flush_interval_s, generation=self.generation,
                                         renewals=self.renewals)

    def fenced(self, storage: StorageGuard | None) -> bool | None:
        """True once the group was taken over above our generation; None when the store did not answer
        (counted as a storage failure when `storage` is given: the caller writes nothing and retries)."""
        try:
            return lease.is_fenced(self._fs, self._root, self.run_id, self.attempt, self.file_rank,
                                   self.generation)
        except Exception as exc:  # noqa: BLE001 - storage errors never reach the caller: counted or not needed
            if storage is not None:
                storage.failed("checking the lease fence", exc)
            return None


def move_to_new_slot(f: Flusher) -> None:
    """The group of `f` was taken over: leave it to recovery and continue in a fresh file slot."""
    old = f.lease
    dropped = 0
    for batches in f.pending.values():
        kept = []
        for b in batches:
            if b.staged:  # its staged file is recovery's now (converted, or by a later pass)
                dropped += 1
                continue
            kept.append(b)
        batches[:] = kept
    slot = _claim_slot(f)
    if slot is None:
        return  # the store did not answer: counted; the next segment attempt sees the fence again
    for table, batches in f.pending.items():  # batches waiting in the local spool move with the writer
        for b in batches:
            if b.spooled and f.storage.spool is not None:
                rel_old = f._staged_rel(table, b.seq)
                f.file_rank = slot
                rel_new = f._staged_rel(table, b.seq)
                f.file_rank = old.file_rank
                try:
                    f.storage.spool.put(rel_new, f.storage.spool.get(rel_old))
                    f.storage.spool.discard(rel_old)
                except OSError as exc:  # the spool lost it: the batch is lost, as any spool loss is
                    log.warning("flightlog: cannot move spooled batch %r: %r", rel_old, exc)
    f.file_rank = slot
    f._retry_group.clear()
    f.lease = WriterLease(f._fs, f._root, f.run_id, f.attempt, slot, old.flush_interval_s, generation=0)
    try:
        remove(f._fs, old.path())
    except Exception as exc:  # noqa: BLE001 - a leftover lease of a fenced group counts as dead anyway
        log.debug("flightlog: cannot remove the fenced lease %r: %r", old.path(), exc)
    group = heartbeat.group_name(f.run_id, f.attempt, old.file_rank)
    message = (f"recovery took over writer group {group} (generation {old.generation}) while this writer "
               f"was paused or unreachable; its {dropped} staged batch(es) are converted by recovery and "
               f"this writer continues in file slot r{slot}: nothing is lost or counted twice")
    log.warning("flightlog: %s", message)
    event = {"kind": "storage_error", "severity": "warning", "wall_time": time.time(), "message": message,
             "details_json": json_text({"fenced_group": group, "generation": old.generation,
                                        "staged_batches_left_to_recovery": dropped, "new_file_rank": slot})}
    data = f._convert.rows_table("events", [event])
    if data is not None and data.num_rows:
        f._add_batch("events", data)


def _claim_slot(f: Flusher) -> int | None:
    base = _MOVED_RANK_BASE + f.file_rank * 1000
    for k in range(1, 1000):
        try:
            if lease.claim_slot(f._fs, f._root, f.run_id, f.attempt, base + k):
                return base + k
        except Exception as exc:  # noqa: BLE001 - storage errors never reach the caller: counted, retried
            f.storage.failed("claiming a new file slot", exc)
            return None
    log.warning("flightlog: no free file slot for writer group %s", heartbeat.group_name(
        f.run_id, f.attempt, f.file_rank))
    return None
