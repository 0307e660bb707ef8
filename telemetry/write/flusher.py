"""The flush thread of one Writer: queued records -> Arrow batches -> staged files -> Parquet segments.

Each cycle swaps the writer's queued records out (`Writer._take_queued`, kept next to the hot path
whose appends it pairs with), converts them into one Arrow batch per table (record_batches),
stages every batch not yet staged as an Arrow IPC file in `_staging/` (the write-ahead: a SIGKILL
loses at most one flush interval) and, every `segment_interval_s` or `segment_rows`, turns a
table's staged batches into one immutable Parquet segment named after the highest staged seq it
holds (see data_schema.layout), then removes them. A heartbeat file tells recovery the writer is
alive. Every write goes through the StorageGuard (outage.py); the thread survives anything, and
no error of it reaches the caller.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import fsspec
import pyarrow as pa

from data_schema.layout import join, parse_path, segment_path, staged_path, staging_dir
from telemetry.store import encodings, staging
from telemetry.store.fs import list_files, remove
from telemetry.write.fencing import WriterLease, move_to_new_slot
from telemetry.write.once_log import log
from telemetry.write.outage import Batch, StorageGuard, drop_reason
from telemetry.write.record_batches import RecordConverter, json_text

if TYPE_CHECKING:  # the writer whose queue this thread drains (writer.py imports this module)
    from telemetry.write.writer import Writer

# Stage a batch as soon as this many points are queued: small batches keep the flush thread's
# buffers warm in cache and its GIL slices short.
_BATCH_POINTS = 131_072


class Flusher:
    """One writer's flush thread and what only it touches: pending batches, seqs, segment clocks."""

    def __init__(self, writer: Writer, fs: fsspec.AbstractFileSystem, root: str, *, file_rank: int,
                 first_seq: int, wall_time_res_us: int, warn: Callable[[str, str], None]) -> None:
        self._w = writer
        self.cfg = cfg = writer.cfg
        self.run_id, self.attempt, self.rank = writer.run_id, writer.attempt, writer.rank
        self.file_rank = file_rank  # rank in file names; differs from `rank` in a forked child or a fenced writer
        self._fs, self._root = fs, root
        self._warn = warn
        self.storage = StorageGuard(fs, root, cfg, run_id=self.run_id, attempt=self.attempt, rank=self.rank,
                                    warn=warn)
        self._convert = RecordConverter(run_id=self.run_id, attempt=self.attempt, rank=self.rank,
                                        wall_time_res_us=wall_time_res_us, warn=warn)
        self._seq = itertools.count(first_seq)
        self.pending: dict[str, list[Batch]] = {}  # built, staged or not, not yet in a segment
        self._retry_group: dict[str, int] = {}  # table -> batches in the segment whose write failed
        self._last_segment: dict[str, float] = {}
        self._dropped_reported = 0  # writer.dropped_count a `dropped_records` event has told of
        # flush() and close() on the caller's thread <-> this thread
        self._closing = False
        self._close_deadline = math.inf
        self._req_gen = 0
        self._done_gen = 0
        self._cv = threading.Condition()
        self._wake = threading.Event()
        self._last_flush = time.monotonic()
        # The lease on (run, attempt, file rank): renewed every cycle, checked around each segment write.
        self.lease = WriterLease(fs, root, self.run_id, self.attempt, file_rank, cfg.flush_interval_s)
        self._thread = threading.Thread(target=self._run, name=f"flightlog-writer-{self.run_id}-r{self.rank}",
                                        daemon=True)

    # ---- the caller's side ---------------------------------------------------------------------

    def start(self) -> None:
        self._write_heartbeat()  # before the thread stages anything: recovery fences only leased groups
        self._last_flush = time.monotonic()
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def has_data(self) -> bool:
        return self._w._has_queued() or any(self.pending.values())

    def wait_flushed(self, timeout: float) -> bool:
        """Ask for a cycle and wait until one that started after the ask has kept up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._req_gen += 1
            target = self._req_gen
            self._wake.set()
            while self._done_gen < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(min(left, 0.5))
        return True

    def finish(self, timeout: float) -> None:
        """Last cycles (final segments) until nothing is left or `timeout` has passed."""
        self._close_deadline = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(max(0.0, timeout))

    # ---- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        poll = min(0.1, self.cfg.flush_interval_s)
        batch_points = max(1, min(_BATCH_POINTS, self.cfg.queue_size // 4))
        busy = False
        storage = self.storage
        while True:
            # While records stream in, look again soon: small batches keep each cycle short.
            wait_s = (0.005 if busy else poll) if storage.backoff == 0 else min(storage.backoff, poll * 10)
            woken = self._wake.wait(wait_s)
            if woken:
                self._wake.clear()
            now = time.monotonic()
            closing = self._closing
            queued = self._w._queued_points()
            busy = queued >= batch_points // 8
            due = now - self._last_flush >= max(self.cfg.flush_interval_s, storage.backoff)
            if not (woken or queued >= batch_points or due or closing):
                continue
            gen = self._req_gen
            self._last_flush = now
            try:
                ok = self.cycle(segment_due=None, final=closing)
            except Exception as exc:  # noqa: BLE001 - the flush thread must survive anything; logged
                self._warn("cycle", f"flightlog: writer flush failed unexpectedly: {exc!r}")
                ok = False
            if ok:
                with self._cv:
                    self._done_gen = max(self._done_gen, gen)
                    self._cv.notify_all()
            if closing and (ok and not self.has_data() or time.monotonic() >= self._close_deadline):
                if ok:
                    self._remove_heartbeat()
                return

    def cycle(self, *, segment_due: bool | None, final: bool = False, include_rank_row: bool = True) -> bool:
        """Drain the queue, stage every pending batch, segment what is due. True if storage kept up."""
        self._drain(include_rank_row)
        # Taken over: stage nothing more in that group (lease.py). Asked only when there is something
        # to stage and the store answers (while it fails, staging finds out when it is back).
        if not self.storage.failures and self._has_unstaged() and self.lease.fenced(self.storage):
            move_to_new_slot(self)
        ok = self._stage_all()
        if ok and self.storage.failures:
            self._drain(include_rank_row, self.storage.recovered_events())
            ok = self._stage_all()
        now = time.monotonic()
        for table, batches in list(self.pending.items()):  # a fenced writer's event may add a table
            if not batches or not ok:
                continue
            rows = sum(b.rows for b in batches)
            last = self._last_segment.setdefault(table, now)
            due = segment_due if segment_due is not None else (
                final or rows >= self.cfg.segment_rows or now - last >= self.cfg.segment_interval_s)
            if due:
                ok = self._segment(table) and ok
        if ok:
            self._write_heartbeat()
        self.storage.end_cycle(ok)
        return ok

    # ---- drain: Python lists -> Arrow batches ----------------------------------------------------

    def _drain(self, include_rank_row: bool = True, extra_rows: list[tuple[str, dict]] | None = None) -> None:
        flat, nflat, multi, rows = self._w._take_queued(include_rank_row)
        if extra_rows:
            rows.extend(extra_rows)
        if nflat or multi:
            data = self._convert.metrics_table(flat, nflat, multi)
            if data.num_rows:
                self._add_batch("metrics", data)
        event = self._dropped_event()
        if event is not None:
            rows.append(("events", event))
        by_table: dict[str, list[dict]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        for table, table_rows in by_table.items():
            data = self._convert.rows_table(table, table_rows)
            if data is not None and data.num_rows:
                self._add_batch(table, data)

    def _dropped_event(self) -> dict | None:
        """A `dropped_records` event for what was dropped since the last one (queue full or storage)."""
        dropped, storage = self._w.dropped_count, self.storage
        # While storage fails the report would only join the backlog; it is written once storage is back.
        if dropped <= self._dropped_reported or storage.failures:
            return None
        delta = dropped - self._dropped_reported
        by_storage = storage.dropped - storage.dropped_reported
        self._dropped_reported, storage.dropped_reported = dropped, storage.dropped
        return {"kind": "dropped_records", "severity": "warning", "wall_time": time.time(),
                "message": f"{delta} records dropped: {drop_reason(delta, by_storage)}",
                "details_json": json_text({"dropped": delta, "total": dropped, "dropped_storage": by_storage})}

    def _has_unstaged(self) -> bool:
        return any(not b.staged for batches in self.pending.values() for b in batches)

    def _add_batch(self, table: str, data: pa.Table) -> None:
        self.pending.setdefault(table, []).append(Batch(next(self._seq), data, data.num_rows, data.nbytes))

    # ---- storage: staging, segments, heartbeat --------------------------------------------------

    def _staged_rel(self, table: str, seq: int) -> str:
        return staged_path(table, self.run_id, self.attempt, self.file_rank, seq)

    def _stage_all(self) -> bool:
        """Stage every batch not yet staged, oldest first. After the store's first refusal in a
        cycle the rest go straight to the spool (or the memory backlog): one timeout per cycle."""
        storage = self.storage
        store_ok = True
        for table, batches in self.pending.items():
            kept = []
            for b in batches:
                if not b.staged:
                    rel = self._staged_rel(table, b.seq)
                    payload = None
                    if store_ok:
                        payload = storage.staged_bytes(b, rel)
                        if payload is not None:
                            store_ok = storage.store(join(self._root, rel), payload, f"staging {table}")
                            if store_ok:
                                storage.mark_staged(b)
                    if not b.staged and not storage.hold(table, b, rel, payload):
                        storage.drop(table, b, rel)
                        self._w.dropped_count += b.rows
                        continue
                kept.append(b)
            batches[:] = kept
        return store_ok

    def _segment(self, table: str) -> bool:
        batches = self.pending.get(table) or []
        if not batches:
            return True
        staged_here = self._staged_seqs(table)
        if staged_here is None:
            return False
        if (fenced := self.lease.fenced(self.storage)) is not False:  # taken over: not one more segment here
            if fenced:
                move_to_new_slot(self)
            return bool(fenced)
        storage = self.storage
        # After a long outage the backlog can be large: cut it into segments of at most
        # 2 x segment_rows, oldest first, so that reading spooled batches back stays bounded. A
        # segment named seq N must hold every pending batch below N: groups go in seq order.
        limit = 2 * self.cfg.segment_rows
        # Lease first: a segment of a big backlog takes a while, and recovery must not take a writer
        # busy with it for dead (a remote one is judged by its renewals).
        self._write_heartbeat()
        while batches:
            n, rows = 0, 0
            while n < len(batches) and (n == 0 or rows + batches[n].rows <= limit):
                rows += batches[n].rows
                n += 1
            # A failed write may have landed anyway (a timeout after the store took it): the retry
            # writes the very same group under the same name, never a larger one named after a
            # later seq, which would hold the landed segment's rows a second time.
            n = min(self._retry_group.pop(table, n), len(batches))
            group = batches[:n]
            # A staged batch whose file vanished was converted by recovery (it took this writer for
            # dead): it is already in a segment, so it must not be written again.
            keep = [b for b in group if not b.staged or b.seq in staged_here]
            if keep:
                try:
                    parts = [storage.batch_data(table, b, self._staged_rel(table, b.seq)) for b in keep]
                except Exception as exc:  # noqa: BLE001 - the store may have gone again: counted, retried
                    storage.failed(f"reading back staged {table}", exc)
                    self._retry_group[table] = n
                    return False
                data = staging.full_table(table, pa.concat_tables(parts),
                                          run_id=self.run_id, attempt=self.attempt, rank=self.rank)
                seq = max(b.seq for b in keep)
                path = join(self._root, segment_path(table, self.run_id, self.attempt, self.file_rank, seq))
                if not storage.store(path, encodings.segment_bytes(data), f"segment {table}"):
                    self._retry_group[table] = n
                    return False
                if (fenced := self.lease.fenced(self.storage)) is not False:
                    if fenced is None:  # the check failed: the same group is written again next time
                        self._retry_group[table] = n
                        return False
                    # Taken over while writing: keep the staged files, which are recovery's; a segment
                    # that landed after recovery listed the group is removed by lease.remove_zombies.
                    del batches[:n]
                    move_to_new_slot(self)
                    return True
            del batches[:n]
            for b in group:
                rel = self._staged_rel(table, b.seq)
                if b.spooled:
                    storage.spool.discard(rel)
                if b.staged:
                    self._remove(rel, "staged file")
        self._last_segment[table] = time.monotonic()
        return True

    def _staged_seqs(self, table: str) -> set[int] | None:
        try:
            files = list_files(self._fs, self._root, staging_dir(table, self.run_id))
        except Exception as exc:  # noqa: BLE001 - storage errors never reach the caller: counted, retried
            self.storage.failed(f"listing staged {table}", exc)
            return None
        out = set()
        for rel in files:
            key = parse_path(rel)
            if key and key.attempt == self.attempt and key.rank == self.file_rank:
                out.add(key.seq)
        return out

    def _write_heartbeat(self) -> None:
        self.storage.store(self.lease.path(), self.lease.body(), "heartbeat", fsync=False)

    def _remove_heartbeat(self) -> None:
        try:
            remove(self._fs, self.lease.path())
        except Exception as exc:  # noqa: BLE001 - a leftover lease only delays recovery of nothing; logged
            log.debug("flightlog: cannot remove lease %r: %r", self.lease.path(), exc)

    def _remove(self, rel: str, what: str) -> None:
        """Remove a file the writer no longer needs; a leftover is harmless, so a failure is only logged:
        a staged file is covered by its segment's seq, a stale heartbeat only delays recovery of nothing."""
        try:
            remove(self._fs, join(self._root, rel))
        except Exception as exc:  # noqa: BLE001 - see the docstring: logged at debug level, never raised
            log.debug("flightlog: cannot remove %s %r: %r", what, rel, exc)
