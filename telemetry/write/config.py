"""WriterConfig: how a Writer buffers and writes, checked once when it is made."""

from __future__ import annotations

import os
from dataclasses import dataclass

from telemetry.store.wall_time import METRICS_WALL_TIME_RESOLUTION_US, check_resolution

MAX_BACKOFF_S = 30.0


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
    live_compaction: bool = True
    """On rank 0, a low-priority background thread keeps the run's file count bounded while it is live
    (telemetry.maintain.live_compactor); off for jobs that run `flightlog compact --follow` instead."""
    live_compaction_interval_s: float = 30.0
    """Seconds between the background compactor's passes."""
    spool_dir: str | None = None
    """Local folder for batches a remote store refused (outage): None means `$FLIGHTLOG_SPOOL` or
    `<tmp>/flightlog-spool` for remote archives and no spool for local ones; "" turns it off."""
    spool_max_bytes: int = 2 << 30
    """Most bytes spooled on local disk while the store is away; beyond it batches are held in memory."""
    backlog_max_bytes: int = 256 << 20
    """Most bytes of batches held in memory while storage fails; beyond it they are dropped and counted."""
    max_backoff_s: float = MAX_BACKOFF_S
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
            ("live_compaction_interval_s", self.live_compaction_interval_s, 0.001),
        )
        for name, value, lo in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= lo:
                raise ValueError(f"WriterConfig.{name} must be a number >= {lo}, got {value!r}")
        if not isinstance(self.queue_size, int) or not isinstance(self.segment_rows, int):
            raise ValueError("WriterConfig.queue_size and segment_rows must be integers")
        if self.spool_dir is not None and not isinstance(self.spool_dir, (str, os.PathLike)):
            raise ValueError(f"WriterConfig.spool_dir must be a folder path, '' or None, got {self.spool_dir!r}")
        check_resolution("WriterConfig.metrics_wall_time_resolution_us", self.metrics_wall_time_resolution_us)
