"""The per-rank writer: what a training process calls. A bounded batch processor that never blocks
or raises into the caller.

Follows the OpenTelemetry batch-processor pattern. The hot path (`metric`, `metrics`) appends
values to a plain list and returns: no lock, no validation, no I/O. A list beyond its bound drops
the record and counts it (`dropped`). The rest lives in modules of its own:
- flusher.py: the flush thread: it swaps the lists out (`_take_queued`, here beside the appends it
  pairs with), stages Arrow batches (write-ahead) and rolls them into Parquet segments;
- record_batches.py: queued Python records -> Arrow tables, in the flush thread;
- outage.py: storage failures: retries with backoff, the spool (spool.py) or in-memory backlog, and
  the storage_error / storage_recovered events;
- run_state.py: the attempt and first seq found in the archive, the `runs`/`attempts` rows;
- process_hooks.py: atexit, sys.excepthook and fork, process-wide;
- config.py: WriterConfig; once_log.py: the logger and its once-a-minute warnings.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import fsspec

from data_schema.layout import run_id_from_name
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import ensure_root_file, open_fs
from telemetry.store.wall_time import check_resolution
from telemetry.write import process_hooks
from telemetry.write.config import WriterConfig
from telemetry.write.flusher import Flusher
from telemetry.write.once_log import OnceLog, log
from telemetry.write.record_batches import SafeJson
from telemetry.write.run_state import RunIdentity, next_attempt, next_seq, utc_now

__all__ = ["Writer", "WriterConfig"]

_time = time.time  # a module global: one lookup less per point on the hot path
_FORK_RANK_BASE = 10_000_000  # file-name rank slot of a forked child's writer (see _after_fork_child)


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
        live_compactor: Callable[[fsspec.AbstractFileSystem, str, str, threading.Event, float], object] | None = None,
    ) -> None:
        # compact_run(fs, root, run_id, min_rows): compaction on close, handed in by the maintain layer
        # (telemetry.Writer wires telemetry.maintain.compaction.compact_closed_run); None: never compact.
        # live_compactor(fs, root, run_id, stop, interval_s): rank 0 runs it on a thread of its own until
        # close (telemetry.maintain.live_compactor.run_in_writer); it does its own I/O and never raises.
        self._compact_run = compact_run
        self._live_compactor = live_compactor
        self._compactor_stop = threading.Event()
        self._compactor_thread: threading.Thread | None = None
        self.cfg = writer_config or WriterConfig()
        if not isinstance(self.cfg, WriterConfig):
            raise TypeError(f"writer_config must be a WriterConfig, got {type(self.cfg).__name__}")
        # checked again: the dataclass is mutable after __post_init__
        self._wall_time_res_us = check_resolution("WriterConfig.metrics_wall_time_resolution_us",
                                                  self.cfg.metrics_wall_time_resolution_us)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
        if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0):
            raise ValueError(f"attempt must be None or an integer >= 0, got {attempt!r}")
        self.run_id = run_id_from_name(run)
        self.rank = rank
        self.host = host or socket.gethostname()
        self._fs, self._root = open_fs(archive_url, storage_options)
        self._owner = rank == 0  # writes the runs/attempts state rows
        try:
            ensure_root_file(self._fs, self._root)
            self.attempt = next_attempt(self._fs, self._root, self.run_id) if attempt is None else attempt
            first_seq = 1 if attempt is None else next_seq(self._fs, self._root, self.run_id, self.attempt, rank)
        except ArchiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear message for an unreachable store
            raise ArchiveError(f"cannot open archive {archive_url!r} for writing: {exc}") from None

        # The queue: flat lists the hot path appends to and the flush thread swaps out.
        q = self.cfg.queue_size
        self._mcap = 4 * q          # flat [step, name, value, wall_time, ...]
        self._mbuf: list = []
        self._multi_cap = 3 * q     # flat [step, {name: value}, wall_time, ...] from metrics()
        self._multi: list = []
        self._rows_cap = q          # (table, row dict) of every other table
        self._rows: list = []
        # metrics_columns() batches, (steps, {name: column}, wall times), bounded in steps like metrics() calls;
        # queued = steps put in - steps the flush thread took (each counter has one writing thread)
        self._cols: list = []
        self._cols_in = self._cols_out = 0
        self._late: list[tuple[str, list, int]] = []  # swapped-out lists a racing append may still reach
        self.dropped_count = 0
        self._rank_lock = threading.Lock()
        self._rank_row: dict[str, Any] | None = {"run_id": self.run_id, "attempt": self.attempt, "rank": rank,
                                                 "host": self.host}
        self._closed = False
        self._close_lock = threading.Lock()
        self._oncelog = OnceLog()
        self._flusher = self._new_flusher(file_rank=rank, first_seq=first_seq)

        self._identity = RunIdentity(
            run_id=self.run_id, attempt=self.attempt, now=utc_now(),
            run={"project": project, "name": name if name is not None else str(run), "world_size": world_size,
                 "dp_size": dp_size, "tp_size": tp_size, "pp_size": pp_size, "config": config,
                 "git_sha": git_sha, "host": self.host, "framework": framework},
            attempt_fields={"resumed_from_step": resumed_from_step, "seed": seed, "reason": reason,
                            "resumed_from_checkpoint": resumed_from_checkpoint})
        if self._owner:
            if self.attempt > 0:
                self._identity.carry_from(self._fs, self._root)
            self._rows.extend(self._identity.open_rows())
            # Write the state rows now: they claim the attempt number and show the run as running.
            self._flusher.cycle(segment_due=True, include_rank_row=False)
        self._flusher.start()
        if self._owner and self.cfg.live_compaction and live_compactor is not None:
            self._compactor_thread = threading.Thread(
                target=live_compactor, name=f"flightlog-compactor-{self.run_id}", daemon=True,
                args=(self._fs, self._root, self.run_id, self._compactor_stop, self.cfg.live_compaction_interval_s))
            self._compactor_thread.start()
        process_hooks.register(self)

    def _new_flusher(self, *, file_rank: int, first_seq: int) -> Flusher:
        return Flusher(self, self._fs, self._root, file_rank=file_rank, first_seq=first_seq,
                       wall_time_res_us=self._wall_time_res_us, warn=self._oncelog.warn)

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

    def metrics_columns(self, steps: Sequence[int], columns: Mapping[str, Sequence[float | None]],
                        wall_times: Sequence[float | dt.datetime] | None = None) -> None:
        """Queue many steps at once, a column per name: the rows of `metrics(steps[i], {name: col[i] for each
        column whose col[i] is not None}, wall_time=wall_times[i])` for each i in turn, bounded and dropped the
        same way, without a dict per step (the batch is expanded on the flush thread). The caller hands the
        sequences over: they must not change afterwards. `wall_times=None`: now, for every step."""
        n = len(steps)
        if (wall_times is not None and len(wall_times) != n) or any(len(c) != n for c in columns.values()):
            self.dropped_count += sum(x is not None for c in columns.values() for x in c)
            self._oncelog.warn("metrics-columns", "flightlog: metrics_columns() got columns of different "
                               "lengths; the batch was dropped")
            return
        room = self._multi_cap // 3 - (self._cols_in - self._cols_out)  # in metrics() calls, as metrics() counts
        if room < n:
            keep = max(0, room)
            self.dropped_count += sum(x is not None for c in columns.values() for x in c[keep:])
            if not keep:
                return
            steps, columns = steps[:keep], {k: c[:keep] for k, c in columns.items()}
            wall_times, n = None if wall_times is None else wall_times[:keep], keep
        self._cols.append((steps, columns, [_time()] * n if wall_times is None else wall_times))
        self._cols_in += n

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
        """Records dropped so far because the queue was full, the writer closed, or storage failed past its
        bounds."""
        return self.dropped_count

    # ---- the flush thread's side of the queue ------------------------------------------------------
    # A list swap and `list.extend` are each atomic under the GIL, but an append that read the old list
    # just before the swap lands in it after: `_late` keeps the last swapped-out lists to collect those.

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

    def _take_queued(self, include_rank_row: bool = True) -> tuple[list, int, list, list[tuple[str, dict]]]:
        """Everything queued: (flat metric() items, how many of them are ours, metrics() triples, rows)."""
        late = self._take_late()
        flat, nflat = self._take("_mbuf")
        if "_mbuf" in late:
            flat, nflat = late["_mbuf"] + flat[:nflat], len(late["_mbuf"]) + nflat
        cols_list, ncols = self._take("_cols")
        batches = late.get("_cols", []) + cols_list[:ncols]
        if batches:  # after the metric() points: a new list, the swapped-out one stays as _late saw it
            self._cols_out += sum(len(b[0]) for b in batches)
            flat = flat[:nflat] + self._column_points(batches)
            nflat = len(flat)
        multi_list, nmulti = self._take("_multi")
        multi = late.get("_multi", []) + multi_list[:nmulti]
        rows_list, nrows = self._take("_rows")
        rows = late.get("_rows", []) + rows_list[:nrows]
        if include_rank_row:
            with self._rank_lock:
                rank_row, self._rank_row = self._rank_row, None
            if rank_row is not None:
                # ranks is a state log like runs/attempts: readers keep the latest row per rank.
                rows.append(("ranks", {**rank_row, "updated_at": _time()}))
        return flat, nflat, multi, rows

    def _column_points(self, batches: list) -> list:
        """metrics_columns() batches -> flat metric() items (step, name, value, wall_time), each step's names
        in column order, as metrics() calls would give them. A batch without None is interleaved by slice
        assignment in C; a batch that cannot be read is dropped, counted and reported."""
        out: list = []
        for steps, columns, walls in batches:
            try:
                n, items = len(steps), list(columns.items())
                k = 4 * len(items)
                if not any(None in c for _, c in items):
                    flat = [None] * (n * k)
                    for j, (name, col) in enumerate(items):
                        j *= 4
                        flat[j::k], flat[j + 1::k], flat[j + 2::k], flat[j + 3::k] = steps, [name] * n, col, walls
                    out += flat
                    continue
                for i, (step, wall) in enumerate(zip(steps, walls, strict=True)):
                    for name, col in items:
                        if (v := col[i]) is not None:
                            out += (step, name, v, wall)
            except (TypeError, ValueError, IndexError, AttributeError) as exc:
                self.dropped_count += len(steps) if isinstance(steps, Sized) else 1
                self._oncelog.warn("metrics-columns", f"flightlog: a metrics_columns() batch was dropped: {exc!r}")
        return out

    def _queued_points(self) -> int:
        """About how many points wait in the queue (metrics() calls and metrics_columns() steps count five
        names)."""
        return len(self._mbuf) // 4 + 5 * len(self._multi) // 3 + 5 * (self._cols_in - self._cols_out)

    def _has_queued(self) -> bool:
        return bool(self._mbuf or self._multi or self._rows or self._cols)

    # ---- flush / close -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Stage everything queued so far; True once it is on storage, False on timeout."""
        flusher = self._flusher
        if self._closed or not flusher.is_alive():
            return self._closed and not flusher.has_data()
        return flusher.wait_flushed(self.cfg.close_timeout_s if timeout is None else timeout)

    def close(self, status: str = "finished", timeout: float | None = None) -> None:
        """Idempotent. Final segments, then the attempts/runs rows of the end; waits at most `timeout`."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        process_hooks.unregister(self)
        timeout = self.cfg.close_timeout_s if timeout is None else timeout
        if self._owner:
            self._rows.extend(self._identity.close_rows(status))
        self._mcap = self._multi_cap = self._rows_cap = -1  # later records are dropped and counted
        flusher = self._flusher
        self._compactor_stop.set()  # a pass in progress finishes its swap; no new one starts
        flusher.finish(timeout)
        compactor = self._compactor_thread
        if compactor is not None:
            compactor.join(max(0.0, timeout))
        spool = flusher.storage.spool
        if spool is not None and not flusher.is_alive():
            spool.close()
        if flusher.is_alive() or flusher.has_data():
            where = (f"; {len(spool)} batch(es) stay in the spool {spool.folder!r} and are uploaded "
                     "by `flightlog index` once the store answers") if spool is not None and len(spool) else ""
            self._oncelog.warn("close", f"flightlog: writer of run {self.run_id!r} rank {self.rank} closed "
                               f"after {timeout:.1f}s with data not yet written (storage unavailable?){where}")
        elif compactor is not None and compactor.is_alive():
            log.warning("flightlog: the live compactor of run %r is still busy; compaction on close skipped",
                        self.run_id)
        elif self._owner and self.cfg.compact_on_close and self._compact_run is not None:
            try:
                self._compact_run(self._fs, self._root, self.run_id, self.cfg.compact_min_rows)
            except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; never raise from close
                log.warning("flightlog: compaction after close failed: %r", exc)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("crashed" if exc_type is not None else "finished")

    # ---- fork ------------------------------------------------------------------------------------

    def _after_fork_child(self) -> None:
        """The child gets its own flush thread and its own file-name slot; the parent keeps its data."""
        self._close_lock = threading.Lock()
        self._rank_lock = threading.Lock()
        self._mbuf, self._multi, self._rows, self._late, self._cols = [], [], [], [], []
        self._cols_in = self._cols_out = 0
        self._rank_row = None
        self._owner = False
        self.dropped_count = 0
        if self._closed:
            # Nothing more is written; a fresh, unstarted flusher lets flush() and close() answer at once.
            self._flusher = self._new_flusher(file_rank=self._flusher.file_rank, first_seq=1)
            return
        # Two processes must never write files of the same (run, attempt, file rank): recovery's
        # "segment seq covers staged seq" rule assumes one writer per key. The data keeps `rank`.
        file_rank = _FORK_RANK_BASE + os.getpid()
        try:
            first_seq = next_seq(self._fs, self._root, self.run_id, self.attempt, file_rank)
        except Exception as exc:  # noqa: BLE001 - never raise in a forked child; a new pid's slot is empty anyway
            log.warning("flightlog: forked writer of run %r cannot list the archive (%r); starting at seq 1",
                        self.run_id, exc)
            first_seq = 1
        self._flusher = self._new_flusher(file_rank=file_rank, first_seq=first_seq)  # its own spool too
        self._flusher.start()
