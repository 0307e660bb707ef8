"""The per-rank writer: a bounded in-memory queue, a flush thread, write-ahead staging, segments.

Follows the OpenTelemetry batch-processor pattern. The hot path (`metric`) appends four
values to a plain list and returns: no lock, no validation, no I/O. A named daemon thread
swaps the lists out (list swaps and `extend` are atomic under the GIL), builds Arrow
columns, stages them as Arrow IPC files (`_staging/...`, the write-ahead) and, every
`segment_interval_s` or `segment_rows`, turns the staged batches of a table into one
immutable Parquet segment named after the highest staged seq it holds (see
data_schema.layout). Storage errors stay in the thread: batches the store refuses go to a
local spool folder (remote archives, telemetry.write.spool) or stay in memory (local archives), each
within a byte bound beyond which they are dropped and counted; the store is retried with
exponential backoff (capped at `max_backoff_s`), and once it answers the backlog is written
oldest first and `storage_error` (warning: when it broke, the first error) and
`storage_recovered` (info: how long, what was spooled, held or dropped) events say what happened.
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa

from data_schema.layout import (
    join,
    parse_path,
    partition_dir,
    run_id_from_name,
    segment_path,
    staged_path,
    staging_dir,
)
from data_schema.tables import TABLES
from telemetry.store import encodings, heartbeat, staging
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import atomic_write_bytes, ensure_root_file, is_local, list_files, open_fs, remove
from telemetry.store.wall_time import METRICS_WALL_TIME_RESOLUTION_US, check_resolution
from telemetry.write.record_batches import RecordConverter, SafeJson
from telemetry.write.spool import Spool, archive_key, default_spool_root

_log = logging.getLogger("flightlog.writer")
_time = time.time
_FORK_RANK_BASE = 10_000_000  # file-name rank slot of a forked child's writer (see _after_fork)
_MAX_BACKOFF_S = 30.0
# Stage a batch as soon as this many points are queued: small batches keep the flush thread's
# buffers warm in cache and its GIL slices short.
_BATCH_POINTS = 131_072
# State rows are tiny and tell the run's story (running, crashed, which ranks): never dropped.
_STATE_TABLES = frozenset({"runs", "attempts", "ranks"})


@dataclass(kw_only=True, slots=True)
class WriterConfig:
    """How a Writer buffers and writes."""

    queue_size: int = 1_000_000
    """Records held in memory before new ones are dropped (counted, reported as `dropped_records`)."""
    flush_interval_s: float = 2.0
    """Queued records are staged (write-ahead) at least this often: the most a SIGKILL loses."""
    segment_interval_s: float = 60.0
    """Staged batches of a table become one Parquet segment this often ..."""
    segment_rows: int = 1_000_000
    """... or as soon as this many rows of a table are staged."""
    close_timeout_s: float = 30.0
    """How long close() waits for the last writes when no timeout is given."""
    compact_on_close: bool = True
    """On rank 0, close() compacts the run's closed segments and rebuilds its LOD table (never raises)."""
    compact_min_rows: int = 100_000
    """... when its uncompacted metric segments hold at least this many rows (small runs gain little)."""
    spool_dir: str | None = None
    """Local folder for batches a remote store refused (outage): None means `$FLIGHTLOG_SPOOL` or
    `<tmp>/flightlog-spool` for remote archives and no spool for local ones; "" turns it off."""
    spool_max_bytes: int = 2 << 30
    """Most bytes spooled on local disk while the store is away; beyond it batches are held in memory."""
    backlog_max_bytes: int = 256 << 20
    """Most bytes of batches held in memory while storage fails; beyond it they are dropped and counted."""
    max_backoff_s: float = _MAX_BACKOFF_S
    """Retries after a storage failure back off exponentially from 0.25 s up to this cap."""
    metrics_wall_time_resolution_us: int = METRICS_WALL_TIME_RESOLUTION_US
    """`metrics.wall_time` is rounded to the nearest multiple of this many microseconds (halves up)
    before it is staged, so segments and compacted files hold the same value. 1000 (default) keeps
    milliseconds, like MLflow; 1 keeps microseconds (about 1 B more per compacted point of a jittery series).
    Durations keep full precision in their own metrics; `system` and `events` keep microseconds."""

    def __post_init__(self) -> None:
        checks = (
            ("queue_size", self.queue_size, 1),
            ("flush_interval_s", self.flush_interval_s, 0.001),
            ("segment_interval_s", self.segment_interval_s, 0.0),
            ("segment_rows", self.segment_rows, 1),
            ("close_timeout_s", self.close_timeout_s, 0.0),
            ("spool_max_bytes", self.spool_max_bytes, 0),
            ("backlog_max_bytes", self.backlog_max_bytes, 0),
            ("max_backoff_s", self.max_backoff_s, 0.01),
        )
        for name, value, lo in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= lo:
                raise ValueError(f"WriterConfig.{name} must be a number >= {lo}, got {value!r}")
        if not isinstance(self.queue_size, int) or not isinstance(self.segment_rows, int):
            raise ValueError("WriterConfig.queue_size and segment_rows must be integers")
        if self.spool_dir is not None and not isinstance(self.spool_dir, (str, os.PathLike)):
            raise ValueError(f"WriterConfig.spool_dir must be a folder path, '' or None, got {self.spool_dir!r}")
        check_resolution("WriterConfig.metrics_wall_time_resolution_us", self.metrics_wall_time_resolution_us)


@dataclass(slots=True)
class _Batch:
    seq: int
    data: pa.Table | None  # staged schema (no constant columns); None while it waits in the spool
    rows: int
    nbytes: int
    staged: bool = False   # in the archive's _staging/
    spooled: bool = False  # its staged bytes are in the local spool (until its rows are in a segment)
    held: bool = False     # kept in memory while storage fails (counts against backlog_max_bytes)


class _OnceLog:
    """Log a recurring problem once per `every_s`, with how often it happened meanwhile."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def warn(self, key: str, msg: str) -> None:
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        if now - self._last.get(key, -math.inf) >= self.every_s:
            n = self._count.pop(key)
            self._last[key] = now
            _log.warning("%s%s", msg, f" ({n} times since last report)" if n > 1 else "")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, default=str, sort_keys=True)


class Writer:
    """Per-rank telemetry writer; any thread may call it; it never blocks or raises into the caller."""

    def __init__(
        self, archive_url: str | os.PathLike | None, run: str, *, rank: int = 0, attempt: int | None = None,
        world_size: int = 1, project: str | None = None, name: str | None = None,
        config: dict | None = None, git_sha: str | None = None, host: str | None = None,
        framework: str | None = None, dp_size: int | None = None, tp_size: int | None = None,
        pp_size: int | None = None, resumed_from_step: int | None = None,
        resumed_from_checkpoint: str | None = None, seed: int | None = None, reason: str | None = None,
        storage_options: dict | None = None, writer_config: WriterConfig | None = None,
        compact_run: Callable[[fsspec.AbstractFileSystem, str, str, int], object] | None = None,
    ) -> None:
        # compact_run(fs, root, run_id, min_rows): compaction on close, handed in by the maintain layer
        # (telemetry.Writer wires telemetry.maintain.compaction.compact_closed_run); None: never compact.
        self._compact_run = compact_run
        self.cfg = writer_config or WriterConfig()
        if not isinstance(self.cfg, WriterConfig):
            raise TypeError(f"writer_config must be a WriterConfig, got {type(self.cfg).__name__}")
        # checked again: the dataclass is mutable after __post_init__
        wall_time_res_us = check_resolution("WriterConfig.metrics_wall_time_resolution_us",
                                            self.cfg.metrics_wall_time_resolution_us)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
        if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0):
            raise ValueError(f"attempt must be None or an integer >= 0, got {attempt!r}")
        self.run_id = run_id_from_name(run)
        self.rank = rank
        self.host = host or socket.gethostname()
        self._fs, self._root = open_fs(archive_url, storage_options)
        self._spool = self._make_spool()
        self._file_rank = rank  # rank in file names; differs from `rank` only in a forked child
        self._owner = rank == 0  # writes the runs/attempts state rows
        try:
            ensure_root_file(self._fs, self._root)
            self.attempt = self._next_attempt() if attempt is None else attempt
            self._seq = itertools.count(1 if attempt is None else self._next_seq())
        except ArchiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear message for an unreachable store
            raise ArchiveError(f"cannot open archive {archive_url!r} for writing: {exc}") from None

        q = self.cfg.queue_size
        self._mcap = 4 * q          # flat [step, name, value, wall_time, ...]
        self._mbuf: list = []
        self._multi_cap = 3 * q     # flat [step, {name: value}, wall_time, ...] from metrics()
        self._multi: list = []
        self._rows_cap = q          # (table, row dict) of every other table
        self._rows: list = []
        self._late: list[tuple[str, list, int]] = []  # swapped-out lists a racing append may still reach
        self.dropped_count = 0
        self._dropped_reported = 0
        self._oncelog = _OnceLog()
        self._convert = RecordConverter(run_id=self.run_id, attempt=self.attempt, rank=self.rank,
                                        wall_time_res_us=wall_time_res_us, warn=self._oncelog.warn)

        self._pending: dict[str, list[_Batch]] = {}  # built, staged or not, not yet in a segment
        self._retry_group: dict[str, int] = {}  # table -> batches in the segment whose write failed
        self._last_segment: dict[str, float] = {}
        self._storage_failures = 0
        self._first_failure: tuple[float, str] | None = None
        self._backoff = 0.0
        self._backlog_bytes = 0      # bytes of batches held in memory while storage fails
        self._outage = _Outage()
        self._storage_dropped = 0    # records dropped because storage failed and every bound was full
        self._storage_dropped_reported = 0
        self._closed = False
        self._closing = False
        self._close_deadline = math.inf
        self._close_lock = threading.Lock()
        self._req_gen = 0
        self._done_gen = 0
        self._cv = threading.Condition()
        self._wake = threading.Event()

        now = _now()
        self._started_at = now
        self._run_row = {
            "run_id": self.run_id, "project": project, "name": name if name is not None else str(run),
            "created_at": now, "status": "running", "world_size": world_size, "dp_size": dp_size,
            "tp_size": tp_size, "pp_size": pp_size, "config_json": _json(config), "git_sha": git_sha,
            "host": self.host, "framework": framework, "updated_at": now,
        }
        self._attempt_row = {
            "run_id": self.run_id, "attempt": self.attempt, "started_at": now, "ended_at": None,
            "end_status": None, "resumed_from_step": resumed_from_step,
            "resumed_from_checkpoint": resumed_from_checkpoint, "seed": seed, "reason": reason, "updated_at": now,
        }
        self._rank_lock = threading.Lock()
        self._rank_row: dict[str, Any] | None = {"run_id": self.run_id, "attempt": self.attempt, "rank": rank,
                                                 "host": self.host}
        if self._owner:
            if self.attempt > 0:
                self._carry_run_identity()
            self._rows.append(("runs", dict(self._run_row)))
            self._rows.append(("attempts", dict(self._attempt_row)))
            # Write the state rows now: they claim the attempt number and show the run as running.
            self._cycle(segment_due=True, include_rank_row=False)
        self._start_thread()
        _register(self)

    # ---- hot path ------------------------------------------------------------------------

    def metric(self, step: int, name: str, value: float, wall_time: float | dt.datetime | None = None) -> None:
        """Queue one point (value: float; NaN/±Inf kept). Costs well under a microsecond."""
        buf = self._mbuf
        if len(buf) < self._mcap:
            buf.extend((step, name, value, _time() if wall_time is None else wall_time))
        else:
            self.dropped_count += 1

    def metrics(self, step: int, values: Mapping[str, float], wall_time: float | dt.datetime | None = None) -> None:
        """Queue many names at one step."""
        buf = self._multi
        if len(buf) < self._multi_cap:
            # Flat (step, names->values, wall) triples, no tuple per call: a dict of floats is not tracked by
            # Python's GC, a tuple holding it is, and one per step queued for seconds was promoted to the
            # oldest generation, bringing on full collections (~165 ms with torch loaded) every few 10k steps.
            buf.extend((step, dict(values), _time() if wall_time is None else wall_time))
        else:
            self.dropped_count += len(values)

    def _put(self, table: str, row: dict[str, Any]) -> None:
        buf = self._rows
        if len(buf) < self._rows_cap:
            buf.append((table, row))
        else:
            self.dropped_count += 1

    def event(self, kind: str, *, step: int | None = None, severity: str = "info", message: str = "",
              data_chunk: int | None = None, sample_ids: list[int] | None = None, layer: str | None = None,
              details: dict | None = None, wall_time: float | dt.datetime | None = None) -> None:
        self._put("events", {
            "step": step, "wall_time": _time() if wall_time is None else wall_time, "kind": kind,
            "severity": severity, "message": message, "data_chunk": data_chunk,
            "sample_ids": None if sample_ids is None else list(sample_ids), "layer": layer,
            "details_json": details if details is None or isinstance(details, str) else SafeJson(details),
        })

    def system(self, name: str, value: float, *, gpu_index: int | None = None, gpu_uuid: str | None = None,
               host: str | None = None, wall_time: float | dt.datetime | None = None) -> None:
        self._put("system", {"name": name, "value": value, "gpu_index": gpu_index, "gpu_uuid": gpu_uuid,
                             "host": host or self.host, "wall_time": _time() if wall_time is None else wall_time})

    def checkpoint(self, *, step: int, tokens_seen: int | None = None, uri: str | None = None,
                   bytes: int | None = None, has_optimizer_state: bool | None = None,  # noqa: A002 - contract name
                   weights_dtypes: list[str] | None = None, optimizer_dtypes: list[str] | None = None,
                   data_chunk: int | None = None, sha256: str | None = None, problems: list[str] | None = None,
                   wall_time: float | dt.datetime | None = None) -> None:
        self._put("checkpoints", {
            "step": step, "tokens_seen": tokens_seen, "uri": uri, "bytes": bytes,
            "has_optimizer_state": has_optimizer_state, "weights_dtypes": weights_dtypes,
            "optimizer_dtypes": optimizer_dtypes, "data_chunk": data_chunk, "sha256": sha256,
            "problems": problems, "wall_time": _time() if wall_time is None else wall_time,
        })

    def data_chunk(self, chunk_id: int, *, first_step: int, last_step: int, tokens: int | None = None,
                   source_mix: dict | None = None) -> None:
        self._put("data_chunks", {"chunk_id": chunk_id, "first_step": first_step, "last_step": last_step,
                                  "tokens": tokens, "source_mix_json": SafeJson(source_mix) if source_mix else None})

    def rank_info(self, *, local_rank: int | None = None, host: str | None = None, gpu_uuid: str | None = None,
                  dp_rank: int | None = None, tp_rank: int | None = None, pp_rank: int | None = None) -> None:
        """This rank's `ranks` row; merged into the default row when that is not yet written."""
        given = {"local_rank": local_rank, "host": host, "gpu_uuid": gpu_uuid, "dp_rank": dp_rank,
                 "tp_rank": tp_rank, "pp_rank": pp_rank}
        with self._rank_lock:
            row = self._rank_row or {"run_id": self.run_id, "attempt": self.attempt, "rank": self.rank,
                                     "host": self.host}
            row.update({k: v for k, v in given.items() if v is not None})
            self._rank_row = row

    def row(self, table: str, **columns: Any) -> None:
        """A row of any table (evals, memorization, ...); run_id/attempt/rank are this writer's."""
        self._put(table, columns)

    @property
    def dropped(self) -> int:
        """Records dropped so far because the queue was full (or the writer closed)."""
        return self.dropped_count

    # ---- flush / close -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Stage everything queued so far; True once it is on storage, False on timeout."""
        if self._closed or not self._thread.is_alive():
            return self._closed and not self._has_data()
        deadline = time.monotonic() + (self.cfg.close_timeout_s if timeout is None else timeout)
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

    def close(self, status: str = "finished", timeout: float | None = None) -> None:
        """Idempotent. Final segments, then the attempts/runs rows of the end; waits at most `timeout`."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _unregister(self)
        timeout = self.cfg.close_timeout_s if timeout is None else timeout
        if self._owner:
            now = _now()
            self._rows.append(("attempts", {**self._attempt_row, "ended_at": now, "end_status": status,
                                            "updated_at": now}))
            self._rows.append(("runs", {**self._run_row, "status": status, "updated_at": now}))
        self._close_deadline = time.monotonic() + timeout
        self._closing = True
        self._mcap = self._multi_cap = self._rows_cap = -1  # later records are dropped and counted
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(max(0.0, timeout))
        if self._spool is not None and not self._thread.is_alive():
            self._spool.close()
        if self._thread.is_alive() or self._has_data():
            where = (f"; {len(self._spool)} batch(es) stay in the spool {self._spool.folder!r} and are uploaded "
                     "by `flightlog index` once the store answers") if self._spool is not None and len(self._spool) else ""
            self._oncelog.warn("close", f"flightlog: writer of run {self.run_id!r} rank {self.rank} closed "
                               f"after {timeout:.1f}s with data not yet written (storage unavailable?){where}")
        elif self._owner and self.cfg.compact_on_close and self._compact_run is not None:
            try:
                self._compact_run(self._fs, self._root, self.run_id, self.cfg.compact_min_rows)
            except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; never raise from close
                _log.warning("flightlog: compaction after close failed: %r", exc)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("crashed" if exc_type is not None else "finished")

    # ---- flush thread -----------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._last_flush = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"flightlog-writer-{self.run_id}-r{self.rank}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poll = min(0.1, self.cfg.flush_interval_s)
        batch_points = max(1, min(_BATCH_POINTS, self.cfg.queue_size // 4))
        busy = False
        while True:
            # While records stream in, look again soon: small batches keep each cycle short.
            wait_s = (0.005 if busy else poll) if self._backoff == 0 else min(self._backoff, poll * 10)
            woken = self._wake.wait(wait_s)
            if woken:
                self._wake.clear()
            now = time.monotonic()
            closing = self._closing
            queued = len(self._mbuf) // 4 + 5 * len(self._multi) // 3
            busy = queued >= batch_points // 8
            due = now - self._last_flush >= max(self.cfg.flush_interval_s, self._backoff)
            if not (woken or queued >= batch_points or due or closing):
                continue
            gen = self._req_gen
            self._last_flush = now
            try:
                ok = self._cycle(segment_due=None, final=closing)
            except Exception as exc:  # noqa: BLE001 - the flush thread must survive anything
                self._oncelog.warn("cycle", f"flightlog: writer flush failed unexpectedly: {exc!r}")
                ok = False
            if ok:
                with self._cv:
                    self._done_gen = max(self._done_gen, gen)
                    self._cv.notify_all()
            if closing and (ok and not self._has_data() or time.monotonic() >= self._close_deadline):
                if ok:
                    self._remove_heartbeat()
                return

    def _has_data(self) -> bool:
        return bool(self._mbuf or self._multi or self._rows or any(self._pending.values()))

    def _cycle(self, *, segment_due: bool | None, final: bool = False, include_rank_row: bool = True) -> bool:
        """Drain the queue, stage every pending batch, segment what is due. True if storage kept up."""
        self._drain(include_rank_row)
        ok = self._stage_all()
        if ok and self._storage_failures:
            self._report_storage_recovered()
            self._drain(include_rank_row)
            ok = self._stage_all()
        now = time.monotonic()
        for table, batches in self._pending.items():
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
        self._backoff = 0.0 if ok else min(self.cfg.max_backoff_s, max(0.25, self._backoff * 2))
        return ok

    # ---- drain: Python lists -> Arrow batches -------------------------------------------------

    def _take(self, attr: str) -> tuple[list, int]:
        """Swap out a buffer; its first n items are ours (a racing append may land after them)."""
        old = getattr(self, attr)
        if not old:
            return old, 0
        setattr(self, attr, [])
        n = len(old)
        self._late.append((attr, old, n))
        return old, n

    def _take_late(self) -> dict[str, list]:
        """Items appended to a swapped-out list by a call that read it just before the swap."""
        extra: dict[str, list] = {}
        keep = []
        for attr, lst, n in self._late:
            if len(lst) > n:
                extra.setdefault(attr, []).extend(lst[n:])
                n = len(lst)
            keep.append((attr, lst, n))
        self._late = keep[-6:]  # a racing append lands within microseconds; a few generations suffice
        return extra

    def _drain(self, include_rank_row: bool = True) -> None:
        late = self._take_late()
        flat, nflat = self._take("_mbuf")
        if "_mbuf" in late:
            flat, nflat = late["_mbuf"] + flat[:nflat], len(late["_mbuf"]) + nflat
        multi_list, nmulti = self._take("_multi")
        multi = late.get("_multi", []) + multi_list[:nmulti]
        rows_list, nrows = self._take("_rows")
        rows = late.get("_rows", []) + rows_list[:nrows]
        if nflat or multi:
            data = self._convert.metrics_table(flat, nflat, multi)
            if data.num_rows:
                self._add_batch("metrics", data)
        if include_rank_row:
            with self._rank_lock:
                rank_row, self._rank_row = self._rank_row, None
            if rank_row is not None:
                # ranks is a state log like runs/attempts: readers keep the latest row per rank.
                rows.append(("ranks", {**rank_row, "updated_at": _time()}))
        dropped = self.dropped_count
        # While storage fails the report would only join the backlog; it is written once storage is back.
        if dropped > self._dropped_reported and not self._storage_failures:
            delta = dropped - self._dropped_reported
            by_storage = self._storage_dropped - self._storage_dropped_reported
            self._dropped_reported, self._storage_dropped_reported = dropped, self._storage_dropped
            rows.append(("events", {"kind": "dropped_records", "severity": "warning", "wall_time": _time(),
                                    "message": f"{delta} records dropped: {_drop_reason(delta, by_storage)}",
                                    "details_json": _json({"dropped": delta, "total": dropped,
                                                           "dropped_storage": by_storage})}))
        by_table: dict[str, list[dict]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        for table, table_rows in by_table.items():
            data = self._convert.rows_table(table, table_rows)
            if data is not None and data.num_rows:
                self._add_batch(table, data)

    def _add_batch(self, table: str, data: pa.Table) -> None:
        self._pending.setdefault(table, []).append(_Batch(next(self._seq), data, data.num_rows, data.nbytes))

    # ---- storage: staging, segments, heartbeat ----------------------------------------------------

    def _stage_all(self) -> bool:
        """Stage every batch not yet staged, oldest first. After the store's first refusal in a
        cycle the rest go straight to the spool (or the memory backlog): one timeout per cycle."""
        store_ok = True
        for table, batches in self._pending.items():
            kept = []
            for b in batches:
                if not b.staged:
                    rel = staged_path(table, self.run_id, self.attempt, self._file_rank, b.seq)
                    payload = None
                    if store_ok:
                        payload = self._staged_bytes(b, rel)
                        if payload is not None:
                            store_ok = self._store(join(self._root, rel), payload, f"staging {table}")
                            if store_ok:
                                self._mark_staged(b)
                    if not b.staged and not self._hold(table, b, rel, payload):
                        self._drop(table, b, rel)
                        continue
                kept.append(b)
            batches[:] = kept
        return store_ok

    def _staged_bytes(self, b: _Batch, rel: str) -> pa.Buffer | bytes | None:
        if not b.spooled:
            if b.data is None:
                return None
            return staging.encode_staged(b.data, run_id=self.run_id, attempt=self.attempt, rank=self.rank)
        try:
            return self._spool.get(rel)
        except OSError as exc:  # the local spool lost it (disk error, someone cleaned /tmp): lost, counted
            self._oncelog.warn("spool-read", f"flightlog: cannot read spooled batch {rel!r}: {exc!r}")
            self._spool.discard(rel)
            b.spooled = False
            return None

    def _mark_staged(self, b: _Batch) -> None:
        b.staged = True
        if b.held:
            b.held = False
            self._backlog_bytes -= b.nbytes

    def _hold(self, table: str, b: _Batch, rel: str, payload: pa.Buffer | bytes | None) -> bool:
        """Keep a batch the store refused: on the local spool (memory freed), else in memory, within bounds."""
        if b.spooled or b.held:
            return True
        if b.data is None:
            return False
        if self._spool is not None:
            if payload is None:
                payload = staging.encode_staged(b.data, run_id=self.run_id, attempt=self.attempt, rank=self.rank)
            if self._spool.put(rel, memoryview(payload)):
                b.spooled, b.data = True, None
                self._outage.spooled_batches += 1
                return True
        if table in _STATE_TABLES or self._backlog_bytes + b.nbytes <= self.cfg.backlog_max_bytes:
            b.held = True
            self._backlog_bytes += b.nbytes
            self._outage.held_batches += 1
            return True
        return False

    def _drop(self, table: str, b: _Batch, rel: str) -> None:
        self.dropped_count += b.rows
        self._storage_dropped += b.rows
        self._outage.dropped_records += b.rows
        if b.spooled:
            self._spool.discard(rel)
        self._oncelog.warn("storage-drop", f"flightlog: storage is failing and the spool/backlog bounds are full: "
                           f"dropped {b.rows} {table} record(s) (counted, reported as `dropped_records`)")

    def _batch_data(self, table: str, b: _Batch) -> pa.Table:
        """A staged batch's rows; a spooled one is read back from the spool, else from _staging/."""
        if b.data is not None:
            return b.data
        rel = staged_path(table, self.run_id, self.attempt, self._file_rank, b.seq)
        try:
            raw = self._spool.get(rel)
        except OSError:
            raw = self._fs.cat_file(join(self._root, rel))
        dec = staging.decode_staged(raw, table)
        if dec.data is None or dec.truncated:
            raise ArchiveError(f"staged batch {rel!r} cannot be read back")
        return dec.data

    def _segment(self, table: str) -> bool:
        batches = self._pending.get(table) or []
        if not batches:
            return True
        staged_here = self._staged_seqs(table)
        if staged_here is None:
            return False
        # After a long outage the backlog can be large: cut it into segments of at most
        # 2 x segment_rows, oldest first, so that reading spooled batches back stays bounded. A
        # segment named seq N must hold every pending batch below N: groups go in seq order.
        limit = 2 * self.cfg.segment_rows
        # Heartbeat first: a segment of a big backlog takes a while, and recovery must not take a
        # writer busy with it for dead (a remote one is judged by its heartbeat's age alone).
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
                    parts = [self._batch_data(table, b) for b in keep]
                except Exception as exc:  # noqa: BLE001 - the store may have gone again
                    self._failed(f"reading back staged {table}", exc)
                    self._retry_group[table] = n
                    return False
                data = staging.full_table(table, pa.concat_tables(parts),
                                          run_id=self.run_id, attempt=self.attempt, rank=self.rank)
                seq = max(b.seq for b in keep)
                path = join(self._root, segment_path(table, self.run_id, self.attempt, self._file_rank, seq))
                if not self._store(path, encodings.segment_bytes(data), f"segment {table}"):
                    self._retry_group[table] = n
                    return False
            del batches[:n]
            for b in group:
                rel = staged_path(table, self.run_id, self.attempt, self._file_rank, b.seq)
                if b.spooled:
                    self._spool.discard(rel)
                if b.staged:
                    try:
                        remove(self._fs, join(self._root, rel))
                    except Exception:  # noqa: BLE001 - a leftover staged file is covered by the segment's seq
                        pass
        self._last_segment[table] = time.monotonic()
        return True

    def _staged_seqs(self, table: str) -> set[int] | None:
        try:
            files = list_files(self._fs, self._root, staging_dir(table, self.run_id))
        except Exception as exc:  # noqa: BLE001
            self._failed(f"listing staged {table}", exc)
            return None
        out = set()
        for rel in files:
            key = parse_path(rel)
            if key and key.attempt == self.attempt and key.rank == self._file_rank:
                out.add(key.seq)
        return out

    def _store(self, path: str, data: pa.Buffer | bytes, what: str, fsync: bool = True) -> bool:
        try:
            atomic_write_bytes(self._fs, path, memoryview(data), fsync=fsync)
            return True
        except Exception as exc:  # noqa: BLE001 - storage errors never reach the caller
            self._failed(what, exc)
            return False

    def _failed(self, what: str, exc: BaseException) -> None:
        self._storage_failures += 1
        if self._first_failure is None:
            self._first_failure = (_time(), f"{what}: {exc!r}")
        self._oncelog.warn("storage", f"flightlog: cannot write to archive {self._root!r} ({what}: {exc!r}); "
                           "keeping data in memory and retrying")

    def _report_storage_recovered(self) -> None:
        """Two events once storage works again: when it broke (warning) and what the outage cost (info)."""
        first_t, first_msg = self._first_failure or (_time(), "")
        n, out = self._storage_failures, self._outage
        self._storage_failures, self._first_failure, self._outage = 0, None, _Outage()
        now = _time()
        details = {"failures": n, "first_error": first_msg, "outage_s": round(now - first_t, 3),
                   "spooled_batches": out.spooled_batches, "held_batches": out.held_batches,
                   "dropped_records": out.dropped_records,
                   "spool": self._spool.folder if self._spool is not None and out.spooled_batches else None}
        kept = ("nothing was lost" if not out.dropped_records
                else f"{out.dropped_records} record(s) were dropped (bounds full)")
        self._rows.append(("events", {
            "kind": "storage_error", "severity": "warning", "wall_time": first_t,
            "message": f"archive storage failed {n} time(s) for {now - first_t:.1f}s ({first_msg:.200}); data was "
                       "kept and written once storage came back",
            "details_json": _json(details),
        }))
        self._rows.append(("events", {
            "kind": "storage_recovered", "severity": "info", "wall_time": now,
            "message": f"archive storage works again after {now - first_t:.1f}s: {out.spooled_batches} batch(es) "
                       f"spooled on local disk and {out.held_batches} held in memory were written; {kept}",
            "details_json": _json(details),
        }))
        _log.warning("flightlog: archive storage works again after %d failure(s) over %.1fs", n, now - first_t)

    def _write_heartbeat(self) -> None:
        path = join(self._root, heartbeat.heartbeat_path(self.run_id, self.attempt, self._file_rank))
        body = heartbeat.heartbeat_bytes(run_id=self.run_id, attempt=self.attempt, rank=self._file_rank,
                                       pid=os.getpid(), host=socket.gethostname(), flush_interval_s=self.cfg.flush_interval_s)
        self._store(path, body, "heartbeat", fsync=False)

    def _remove_heartbeat(self) -> None:
        try:
            remove(self._fs, join(self._root, heartbeat.heartbeat_path(self.run_id, self.attempt, self._file_rank)))
        except Exception:  # noqa: BLE001 - a stale heartbeat only delays recovery of nothing
            pass

    def _make_spool(self) -> Spool | None:
        folder = self.cfg.spool_dir
        if folder == "" or (folder is None and is_local(self._fs)):
            return None  # a local archive's disk is likely the spool's disk too: hold in memory instead
        root = os.fspath(folder) if folder is not None else default_spool_root()
        return Spool(root, archive_key(self._fs, self._root), self.cfg.spool_max_bytes)

    # ---- open: attempt and seq numbers ---------------------------------------------------------

    def _next_attempt(self) -> int:
        found = [-1]
        for folder in (partition_dir("attempts", self.run_id), staging_dir("attempts", self.run_id)):
            for rel in list_files(self._fs, self._root, folder):
                key = parse_path(rel)
                if key and key.attempt is not None:
                    found.append(key.attempt)
        return max(found) + 1

    def _next_seq(self) -> int:
        """First free seq of (attempt, file rank): a reused attempt must not overwrite files."""
        top = 0
        for table in TABLES:
            for folder in (partition_dir(table, self.run_id), staging_dir(table, self.run_id)):
                for rel in list_files(self._fs, self._root, folder):
                    key = parse_path(rel)
                    if key and key.attempt == self.attempt and key.rank == self._file_rank and key.seq:
                        top = max(top, key.seq)
        return top + 1

    def _carry_run_identity(self) -> None:
        """A resumed run keeps its created_at and the fields this launch did not give."""
        try:
            latest = _latest_run_row(self._fs, self._root, self.run_id)
        except Exception:  # noqa: BLE001 - best effort; the new row is still valid
            return
        if not latest:
            return
        self._run_row["created_at"] = latest.get("created_at") or self._run_row["created_at"]
        for k in ("project", "config_json", "git_sha", "framework", "dp_size", "tp_size", "pp_size"):
            if self._run_row.get(k) is None and latest.get(k) is not None:
                self._run_row[k] = latest[k]

    # ---- fork ------------------------------------------------------------------------------------

    def _after_fork_child(self) -> None:
        """The child gets its own flush thread and its own file-name slot; the parent keeps its data."""
        self._close_lock = threading.Lock()
        self._rank_lock = threading.Lock()
        self._cv = threading.Condition()
        self._wake = threading.Event()
        self._mbuf, self._multi, self._rows, self._late = [], [], [], []
        self._pending = {}
        self._retry_group = {}
        self._backlog_bytes = 0
        self._outage = _Outage()
        self._spool = self._make_spool()  # the parent's spool files are the parent's
        self._rank_row = None
        self._owner = False
        self.dropped_count = self._dropped_reported = 0
        if self._closed:
            return
        # Two processes must never write files of the same (run, attempt, file rank): recovery's
        # "segment seq covers staged seq" rule assumes one writer per key. The data keeps `rank`.
        self._file_rank = _FORK_RANK_BASE + os.getpid()
        try:
            self._seq = itertools.count(self._next_seq())
        except Exception:  # noqa: BLE001
            self._seq = itertools.count(1)
        self._start_thread()


def _drop_reason(total: int, by_storage: int) -> str:
    queue, storage = "the writer queue was full", "storage failed and the spool and backlog bounds were full"
    if by_storage == 0:
        return queue
    if by_storage == total:
        return storage
    return f"{total - by_storage} because {queue}, {by_storage} because {storage}"


@dataclass(slots=True)
class _Outage:
    """What one storage outage cost, for the events written once storage is back."""

    spooled_batches: int = 0
    held_batches: int = 0
    dropped_records: int = 0


def _latest_run_row(fs, root: str, run_id: str) -> dict | None:
    rows: list[dict] = []
    for folder in (partition_dir("runs", run_id), staging_dir("runs", run_id)):
        for rel in list_files(fs, root, folder):
            key = parse_path(rel)
            if key is None:
                continue
            raw = fs.cat_file(join(root, rel))
            if key.kind == "staged":
                dec = staging.decode_staged(raw, "runs")
                if dec.data is None:
                    continue
                rows.extend(staging.full_table("runs", dec.data, run_id=run_id, attempt=0, rank=0).to_pylist())
            else:
                rows.extend(encodings.read_segment(raw).to_pylist())
    rows = [r for r in rows if r.get("updated_at") is not None]
    return max(rows, key=lambda r: r["updated_at"]) if rows else None


# ---- process-wide: atexit, excepthook, fork ------------------------------------------------------

_OPEN: weakref.WeakSet[Writer] = weakref.WeakSet()
_STATE = {"installed": False, "uncaught": False}


def _register(w: Writer) -> None:
    _OPEN.add(w)
    if not _STATE["installed"]:
        _STATE["installed"] = True
        atexit.register(_close_all)
        previous = sys.excepthook

        def hook(exc_type, exc, tb):  # an uncaught exception means the run crashed
            _STATE["uncaught"] = True
            previous(exc_type, exc, tb)

        sys.excepthook = hook
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork)


def _unregister(w: Writer) -> None:
    _OPEN.discard(w)


def _close_all() -> None:
    status = "crashed" if _STATE["uncaught"] else "finished"
    for w in list(_OPEN):
        try:
            w.close(status)
        except Exception:  # noqa: BLE001 - interpreter exit: best effort
            pass


def _after_fork() -> None:
    for w in list(_OPEN):
        w._after_fork_child()
