"""What every importer shares: the run it produces, a bulk columnar write path, and a summary.

An importer turns one source run into an `ImportedRun` (Arrow columns, no per-point Python
objects after parsing) and `write_run` puts it into the archive as attempt 0, rank 0, with
deterministic segment names. Re-importing the same source rewrites the same names
atomically, then deletes whatever else the run's folders still hold (stale segments of a
longer earlier import, compacted or LOD files built from the old data): readers see the old
run or the new one, never a mix with missing pieces.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from data_schema.layout import join, lod_dir, partition_dir, run_id_from_name, segment_path, validate_run_id
from data_schema.tables import TABLES, TS, schema
from telemetry.store import encodings, staging
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import atomic_write_bytes, ensure_root_file, list_files, open_fs, remove
from telemetry.store.wall_time import METRICS_WALL_TIME_RESOLUTION_US, check_resolution, round_wall_time_column

SEGMENT_ROWS = 2_000_000  # rows per imported segment (row groups stay at encodings.ROW_GROUP_ROWS)


class ImportSourceError(ArchiveError):
    """A source that is missing, of the wrong kind, or too damaged to import."""


# ---- what an importer produces ------------------------------------------------------------------

@dataclass(slots=True)
class ImportedRun:
    """One source run, ready to write: metrics/system as Arrow columns, the rest as plain values."""

    run_id: str
    name: str
    source: str                      # "wandb", "tensorboard", "mlflow", "csv", "jsonl"
    source_path: str
    metrics: pa.Table                # columns step:int64, name:string, value:float64, wall_time:timestamp
    status: str = "finished"
    project: str | None = None
    created_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    host: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # summary, source run id, tags: kept in config_json
    system: pa.Table | None = None   # columns wall_time, name, value, gpu_index, host
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # why -> how many (records, values, bytes)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # `checkpoints` rows (no run_id)
    # attempts rows (attempt, started_at, ended_at, end_status, resumed_from_step, reason) of a source that
    # restarted (a Megatron log); metrics and events then carry an `attempt` column/key. Default: attempt 0 only.
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def points(self) -> int:
        return self.metrics.num_rows


@dataclass(slots=True)
class ImportSummary:
    """What one `flightlog import` did, for the summary line and for tests."""

    source: str
    runs: list[str] = field(default_factory=list)
    points: int = 0
    system_points: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    source_bytes: int = 0
    archive_bytes: int = 0

    def add(self, run: ImportedRun, written_bytes: int) -> None:
        self.runs.append(run.run_id)
        self.points += run.points
        self.system_points += 0 if run.system is None else run.system.num_rows
        self.archive_bytes += written_bytes
        for why, n in run.skipped.items():
            if n:
                self.skipped[why] = self.skipped.get(why, 0) + n

    def line(self) -> str:
        rate = f" in {self.seconds:.2f}s ({self.points / self.seconds:,.0f} points/s)" if self.seconds > 0 else ""
        system = f", {self.system_points:,} system points" if self.system_points else ""
        skipped = "; skipped: " + ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items())) \
            if self.skipped else "; nothing skipped"
        return (f"imported {len(self.runs)} {self.source} run(s) ({', '.join(self.runs) or '-'}): "
                f"{self.points:,} points{system}{rate}{skipped}")


# ---- building columns ---------------------------------------------------------------------------

def seconds_to_ts(seconds: Iterable[float | None] | np.ndarray) -> pa.Array:
    """Unix seconds (float, None/NaN = unknown) -> timestamp[us, UTC], rounded to the microsecond."""
    arr = np.asarray(seconds if isinstance(seconds, np.ndarray) else list(seconds), dtype=np.float64)
    mask = ~np.isfinite(arr)
    micros = np.round(np.where(mask, 0.0, arr) * 1e6).astype(np.int64)
    return pa.array(micros, pa.int64(), mask=mask).cast(TS)


def millis_to_ts(millis: Iterable[int] | np.ndarray) -> pa.Array:
    arr = np.asarray(millis if isinstance(millis, np.ndarray) else list(millis), dtype=np.int64)
    return pa.array(arr * 1000, pa.int64()).cast(TS)


def metrics_table(steps: Any, names: Any, values: Any, wall_times: pa.Array | None) -> pa.Table:
    """The staged metrics columns (no run_id/attempt/rank) from arrays or lists."""
    steps_a = pa.array(steps, pa.int64()) if not isinstance(steps, pa.Array) else steps.cast(pa.int64())
    names_a = pa.array(names, pa.string()) if not isinstance(names, pa.Array) else names.cast(pa.string())
    values_a = pa.array(values, pa.float64()) if not isinstance(values, pa.Array) else values.cast(pa.float64())
    if wall_times is None:
        wall_times = pa.nulls(len(steps_a), TS)
    return pa.table({"step": steps_a, "name": names_a, "value": values_a, "wall_time": wall_times})


def empty_metrics() -> pa.Table:
    return metrics_table([], [], [], None)


def system_table(wall_times: pa.Array, names: list[str], values: list[float], gpu_index: list[int | None],
                 host: str | None) -> pa.Table:
    n = len(names)
    return pa.table({
        "wall_time": wall_times, "name": pa.array(names, pa.string()), "value": pa.array(values, pa.float64()),
        "gpu_index": pa.array(gpu_index, pa.int32()), "host": pa.array([host] * n, pa.string()),
    })


def flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Nested dicts -> ("a/b/c", leaf) pairs (W&B and JSONL nest metric names)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix, obj


def as_number(value: Any) -> float | None:
    """A logged value as float, or None when it is not a number (strings, lists, media)."""
    if isinstance(value, float):
        return value
    if isinstance(value, (int, bool)):
        return float(value)
    return None


def source_id(prefix: str, ident: str) -> str:
    """A deterministic, valid run id for a source run (same source -> same id)."""
    return run_id_from_name(f"{prefix}-{ident}")


# ---- writing --------------------------------------------------------------------------------------

def _sorted_by_name_step(data: pa.Table) -> pa.Table:
    """Sort by (name, step) like compacted segments, via integer ranks of the (few) names."""
    if data.num_rows == 0:
        return data
    enc = pc.dictionary_encode(data.column("name")).combine_chunks()
    order_of_name = np.argsort(np.argsort(enc.dictionary.to_numpy(zero_copy_only=False)))
    name_rank = order_of_name[enc.indices.to_numpy()]
    steps = data.column("step").to_numpy()
    idx = np.lexsort((steps, name_rank))  # stable: equal (name, step) keep source order
    return data.take(pa.array(idx))


def _existing_source(fs, root: str, run_id: str) -> str | None:
    """source_path of the run already in the archive: '' when it holds a run that was not imported."""
    files = [rel for rel in list_files(fs, root, partition_dir("runs", run_id)) if rel.endswith(".parquet")]
    if not files:
        # metrics without a runs row still mean someone else's data lives here
        other = [rel for rel in list_files(fs, root, partition_dir("metrics", run_id)) if rel.endswith(".parquet")]
        return "" if other else None
    found = ""
    latest = None
    for rel in files:
        with fs.open(join(root, rel), "rb") as f:
            for row in pq.read_table(f, columns=["config_json", "updated_at"]).to_pylist():
                if latest is None or (row["updated_at"] and row["updated_at"] >= latest):
                    latest = row["updated_at"]
                    try:
                        found = (json.loads(row["config_json"] or "{}") or {}).get("source_path") or ""
                    except (ValueError, AttributeError):
                        found = ""
    return found


def _config_json(run: ImportedRun) -> str:
    body = {"source": run.source, "source_path": run.source_path, **run.extra, "config": run.config}
    return json.dumps(body, default=str, sort_keys=True, allow_nan=True)


def _state_rows(run: ImportedRun, now: dt.datetime) -> dict[str, pa.Table]:
    created = run.created_at or now
    ended = run.ended_at or created
    end_status = None if run.status == "running" else run.status
    attempts = [{"reason": f"imported from {run.source}", **a, "run_id": run.run_id, "updated_at": now}
                for a in run.attempts] or [
        {"run_id": run.run_id, "attempt": 0, "started_at": created, "ended_at": None if end_status is None else ended,
         "end_status": end_status, "reason": f"imported from {run.source}", "updated_at": now}]
    rows = {
        "runs": [{"run_id": run.run_id, "project": run.project, "name": run.name, "created_at": created,
                  "status": run.status, "world_size": 1, "config_json": _config_json(run), "host": run.host,
                  "framework": run.source, "updated_at": now}],
        "attempts": attempts,
        "ranks": [{"run_id": run.run_id, "attempt": a["attempt"], "rank": 0, "host": run.host, "updated_at": now}
                  for a in attempts],
    }
    out = {t: pa.Table.from_pylist(r, schema=schema(t)) for t, r in rows.items()}
    for table, extra in (("events", run.events), ("checkpoints", run.checkpoints)):
        if extra:
            out[table] = pa.Table.from_pylist([{"attempt": 0, "rank": 0, **e, "run_id": run.run_id} for e in extra],
                                              schema=schema(table))
    return out


def _with_all_columns(table: str, data: pa.Table) -> pa.Table:
    """Columns the importer has no value for become nulls (constant columns are added later)."""
    for f in schema(table):
        if f.name not in data.column_names and f.name not in staging.CONSTANT_COLUMNS:
            data = data.append_column(f.name, pa.nulls(data.num_rows, f.type))
    return data


def _chunks(data: pa.Table, rows: int) -> list[pa.Table]:
    return [data.slice(i, rows) for i in range(0, data.num_rows, rows)] or []


def _by_attempt(data: pa.Table) -> list[tuple[int, pa.Table]]:
    """Rows grouped by their `attempt` column (one segment file per attempt); all attempt 0 without one."""
    if "attempt" not in data.column_names:
        return [(0, data)]
    col = data.column("attempt")
    return [(int(a), data.filter(pc.equal(col, a))) for a in sorted(pc.unique(col).to_pylist())]


def write_run(archive_url: str | os.PathLike | None, run: ImportedRun, *,
              storage_options: dict | None = None, replace_foreign: bool = False,
              metrics_wall_time_resolution_us: int = METRICS_WALL_TIME_RESOLUTION_US) -> int:
    """Write `run` into the archive (replacing an earlier import of the same source); bytes written.

    Metric wall times are rounded as the Writer rounds them (telemetry.store.wall_time: milliseconds by
    default, 1 keeps microseconds), so a re-import writes the same values; system rows keep µs."""
    validate_run_id(run.run_id)
    res = check_resolution("metrics_wall_time_resolution_us", metrics_wall_time_resolution_us)
    fs, root = open_fs(archive_url, storage_options)
    try:
        ensure_root_file(fs, root)
    except ArchiveError:
        raise
    except OSError as exc:
        raise ArchiveError(f"cannot write to archive {archive_url!r}: {exc}") from None
    previous = _existing_source(fs, root, run.run_id)
    if previous is not None and previous != run.source_path and not replace_foreign:
        what = f"imported from {previous}" if previous else "recorded by a trainer, not imported"
        raise ImportSourceError(
            f"run {run.run_id!r} already exists in {archive_url} ({what}); importing {run.source_path} "
            "would replace it: pick another run name with --run NAME"
        )
    now = dt.datetime.now(dt.UTC)
    tables: dict[str, list[pa.Table]] = {t: [d] for t, d in _state_rows(run, now).items()}
    tables["metrics"] = [chunk for _, part in _by_attempt(round_wall_time_column(run.metrics, res))
                         for chunk in _chunks(_sorted_by_name_step(part), SEGMENT_ROWS)]
    if run.system is not None and run.system.num_rows:
        tables["system"] = _chunks(run.system, SEGMENT_ROWS)

    written: set[str] = set()
    total = 0
    for table, parts in tables.items():
        seqs: dict[int, int] = {}
        for attempt, part in ((a, p) for chunk in parts for a, p in _by_attempt(chunk)):
            seq = seqs[attempt] = seqs.get(attempt, 0) + 1
            full = staging.full_table(table, _with_all_columns(table, part), run_id=run.run_id, attempt=attempt,
                                      rank=0)
            rel = segment_path(table, run.run_id, attempt, 0, seq)
            buf = encodings.segment_bytes(full)
            atomic_write_bytes(fs, join(root, rel), memoryview(buf))
            written.add(rel)
            total += buf.size
    # Only now that the new files are in place: drop what an earlier import left behind.
    # (the LOD, derived from metrics by compaction, is stale once the run is re-imported)
    for folder in [partition_dir(t, run.run_id) for t in TABLES] + [lod_dir(run.run_id)]:
        for rel in list_files(fs, root, folder):
            if rel not in written:
                remove(fs, join(root, rel))
    return total


# ---- progress ---------------------------------------------------------------------------------------

def progress(total: int | None, desc: str, *, unit: str = "B", quiet: bool = False):
    """A tqdm bar on stderr (bytes of the source, by default)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, disable=quiet,
                leave=False, mininterval=0.5)
