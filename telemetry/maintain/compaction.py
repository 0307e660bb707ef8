"""Compaction: a run's small `part-*` segments become large sorted `compact-*` files, swapped in
through per-run compaction records, and the run's level-of-detail (LOD) table is rebuilt.

The swap, so that a reader never sees a missing or a doubled row:
1. the compact file is written (atomically); without a record every reader ignores it;
2. the record `_manifest/compactions/<run_id>/<table>-<uid>.json` is written (atomically): from
   then on readers ignore the parts it lists and read the compact file instead;
3. once `grace_s` has passed, compaction deletes the replaced parts (telemetry.maintain.compaction_gc;
   readers that still hold an older file list keep working meanwhile; a grace of 0 deletes them
   in the same pass).
Records are accepted in (created_at, uid) order; a record that lists a part an earlier accepted
record already replaced (two compactions raced) is rejected, and its compact file is ignored.
`created_at` is stamped when the record is written, and a swap first checks that none of its inputs
was replaced meanwhile (`verify`), so a slow compaction that lost a race writes no record at all.
Compact files are merged again into higher tiers while a run is live (telemetry.maintain.live_compactor):
a record may replace compact files as well as parts.

Recovery and the writer find the highest segment seq of a (table, run, attempt, rank) from part
file names. So the replaced part with the highest seq of each group is not deleted but
overwritten by an empty segment of the same name (a "watermark"): staged batches already in a
compacted segment are still recognised as converted, and attempt/seq numbers are never reused.
Here (at close, `flightlog compact`), segments of a writer that is alive (fresh heartbeat) or that
still has staged files are never compacted: they belong to a writer (or to recovery) that will name
more of them. The live compactor merges the closed ones of those too, by a narrower rule (its docstring).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_schema.layout import compact_name, join, parse_path, partition_dir, validate_run_id
from data_schema.tables import TABLES
from data_schema.validation import conform
from telemetry.maintain.compaction_gc import collect_garbage
from telemetry.maintain.lod_build import rebuild_lod
from telemetry.maintain.manifest import refresh_manifest, refresh_runs_reported
from telemetry.maintain.recovery import recover
from telemetry.store import encodings
from telemetry.store.fs import atomic_write_bytes, list_files, open_fs, remove
from telemetry.store.liveness import (
    META_KEY,
    busy_groups,
    live_filter,
    live_writers,
    read_records,
    record_path,
    resolve,
)
from telemetry.store.run_index import update_run_index
from telemetry.store.wall_time import round_wall_time_column

_log = logging.getLogger("flightlog.compaction")

# Sort order of compacted files: (name, step) for metrics, as ARCHITECTURE.md asks; time for the rest.
_SORT_KEYS: dict[str, tuple[str, ...]] = {
    "metrics": ("name", "step", "attempt", "rank"),
    "system": ("name", "wall_time", "rank"),
    "events": ("step", "wall_time", "rank"),
    "checkpoints": ("step", "wall_time"),
    "data_chunks": ("chunk_id",),
    "evals": ("benchmark", "metric", "step"),
    "memorization": ("step",),
}
_TABLE_ORDER = ("metrics",) + tuple(t for t in TABLES if t != "metrics")


@dataclass(kw_only=True, slots=True)
class CompactionConfig:
    """How compacted files are laid out."""

    row_group_rows: int = 1_000_000
    """Rows per row group (100k-1M keeps statistics useful for skipping and pages large)."""
    max_file_rows: int = 8_000_000
    """Rows per compact file: bounds the memory one compaction needs (about 60 B per row)."""
    value_encoding: str = "BYTE_STREAM_SPLIT"
    """Encoding of float columns; "PLAIN" for engines that cannot read BYTE_STREAM_SPLIT."""
    zstd_level: int = 9
    """zstd level of compacted files (written once, read often: worth more CPU than segments)."""
    wall_time_resolution_us: int = 1
    """Further round wall_time (every table) to this many microseconds in compacted files, by
    telemetry.store.wall_time's rule (nearest multiple, halves up). 1 (default) keeps what the segments
    hold: metrics wall times are already milliseconds unless WriterConfig.metrics_wall_time_resolution_us
    says otherwise, and system/events keep microseconds."""
    lod: bool = True
    """Rebuild the run's level-of-detail table after compacting its metrics."""
    lod_widths: tuple[int, ...] = (64, 512, 4096, 32768)
    """Bucket widths (steps) of the LOD levels; each a multiple of the previous one."""

    def __post_init__(self) -> None:
        for name in ("row_group_rows", "max_file_rows", "wall_time_resolution_us", "zstd_level"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CompactionConfig.{name} must be an integer >= 1, got {v!r}")
        if self.value_encoding not in ("BYTE_STREAM_SPLIT", "PLAIN"):
            raise ValueError(f"CompactionConfig.value_encoding must be 'BYTE_STREAM_SPLIT' or 'PLAIN', "
                             f"got {self.value_encoding!r}")
        widths = tuple(self.lod_widths)
        if not widths or any(not isinstance(w, int) or w < 2 for w in widths) or any(
                b % a for a, b in zip(widths, widths[1:], strict=False)) or list(widths) != sorted(set(widths)):
            raise ValueError(f"CompactionConfig.lod_widths must be increasing integers >= 2, each a multiple "
                             f"of the previous one, got {self.lod_widths!r}")


@dataclass(slots=True)
class CompactionReport:
    runs: int = 0
    files_written: int = 0            # compact files
    segments_replaced: int = 0        # part files swapped out by those
    rows: int = 0
    bytes_before: int = 0             # of the replaced parts
    bytes_after: int = 0              # of the compact files
    skipped_live: int = 0             # parts left alone: their writer is alive or has staged data
    lod_files: int = 0
    lod_rows: int = 0
    removed: int = 0                  # files deleted after the grace period
    seconds: float = 0.0
    by_table: dict[str, int] = field(default_factory=dict)  # rows compacted per table
    problems: list[str] = field(default_factory=list)


# ---- compaction ---------------------------------------------------------------------------------

def compact(url: str | os.PathLike | None = None, run: str | None = None, *, grace_s: float = 600.0,
            storage_options: dict | None = None, config: CompactionConfig | None = None,
            recover_first: bool = True, tables: Iterable[str] | None = None,
            progress: Callable[[int, int, str], None] | None = None) -> CompactionReport:
    """Compact the parts of one run (or every run), rebuild LOD tables, and delete files replaced
    more than `grace_s` ago. Safe while writers are alive: their segments are left alone.
    `progress(done, total, run_id)` is called after each run. An existing manifest is rewritten, so
    that readers of stores that cannot list see the compact files and stop reading replaced parts."""
    fs, root = open_fs(url, storage_options)
    problems = recover(url, storage_options=storage_options).problems if recover_first else []
    report = compact_fs(fs, root, run, grace_s=grace_s, config=config, tables=tables, progress=progress)
    report.problems[:0] = problems
    if report.files_written or report.removed or report.lod_files:
        try:
            # one run compacted: only its entries change (other runs' files are neither listed nor opened)
            refresh_manifest(url, fs, root, storage_options, runs=None if run is None else [validate_run_id(run)])
        except Exception as exc:  # noqa: BLE001 - the data is compacted; only the manifest is stale (reported)
            report.problems.append(f"manifest not rewritten: {exc!r} (run `flightlog index`)")
    return report


def all_runs(url: str | os.PathLike | None = None, storage_options: dict | None = None) -> list[str]:
    """The run ids that have files in any table of the archive."""
    return runs_in(*open_fs(url, storage_options))


def compact_fs(fs: fsspec.AbstractFileSystem, root: str, run: str | None = None, *, grace_s: float = 600.0,
               config: CompactionConfig | None = None, tables: Iterable[str] | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> CompactionReport:
    """compact() on an open filesystem, without recovery first."""
    cfg = config or CompactionConfig()
    t0 = time.perf_counter()
    report = CompactionReport()
    runs = [validate_run_id(run)] if run is not None else runs_in(fs, root)
    live = live_writers(fs, root)
    wanted = tuple(t for t in _TABLE_ORDER if tables is None or t in set(tables))
    for done, run_id in enumerate(runs, start=1):
        report.runs += 1
        for table in wanted:
            try:
                _compact_table(fs, root, table, run_id, live, cfg, report)
            except Exception as exc:  # noqa: BLE001 - one table's failure must not stop the others (reported)
                report.problems.append(f"{table} of run {run_id}: compaction failed: {exc!r}")
        if cfg.lod and (tables is None or "metrics" in wanted):
            try:
                n = rebuild_lod(fs, root, run_id, widths=cfg.lod_widths)
                report.lod_files += n > 0
                report.lod_rows += n
            except Exception as exc:  # noqa: BLE001 - curves read raw rows without a LOD (reported)
                report.problems.append(f"metrics_lod of run {run_id}: build failed: {exc!r}")
        # after this pass's swaps, so that a grace of 0 removes what they replaced now, not next time
        garbage = collect_garbage(fs, root, run_id, grace_s)
        report.removed += garbage.removed
        report.problems += garbage.problems
        if report.files_written or garbage.removed:
            update_run_index(fs, root, run_id)  # never raises for a store error (it logs it)
        if progress is not None:
            progress(done, len(runs), run_id)
    report.seconds = time.perf_counter() - t0
    return report


def compact_closed_run(fs: fsspec.AbstractFileSystem, root: str, run_id: str, *, min_rows: int = 100_000,
                       grace_s: float = 600.0) -> CompactionReport | None:
    """The writer's close hook: compact `run_id` when its uncompacted metric parts hold at least
    `min_rows` rows (small runs gain little). Never raises; problems are logged."""
    try:
        records = read_records(fs, root, run_id=run_id)
        files = list_files(fs, root, partition_dir("metrics", run_id))
        keep, _ = live_filter(files, records)
        parts = [r for r in keep if (k := parse_path(r)) is not None and k.kind == "segment"]
        rows = 0
        for rel in parts:
            with fs.open(join(root, rel), "rb") as fh:
                rows += pq.ParquetFile(fh).metadata.num_rows
            if rows >= min_rows:
                break
        report = compact_fs(fs, root, run_id, grace_s=grace_s) if rows >= min_rows else None
        problems = list(report.problems) if report is not None else []
        refresh_runs_reported(fs, root, [run_id], problems)  # the run's last segments, when there is a manifest
        for p in problems:
            _log.warning("flightlog: compaction of run %r: %s", run_id, p)
        return report
    except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; the data is safe without it
        _log.warning("flightlog: compaction of run %r after close failed: %r", run_id, exc)
        return None


def runs_in(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The run ids that have files in any table under `root` of an open filesystem."""
    runs = set()
    for table in TABLES:
        for rel in list_files(fs, root, table):
            key = parse_path(rel)
            if key is not None:
                runs.add(key.run_id)
    return sorted(runs)


def _compact_table(fs, root: str, table: str, run_id: str, live: set, cfg: CompactionConfig,
                   report: CompactionReport) -> None:
    files = list_files(fs, root, partition_dir(table, run_id), detail=True)
    records = read_records(fs, root, run_id=run_id)
    keep, _ = live_filter(files, records)
    busy = busy_groups(fs, root, table, run_id, live)
    parts = []
    for rel in sorted(keep):
        key = parse_path(rel)
        if key is None or key.kind != "segment":
            continue
        if (key.attempt, key.rank) in busy:
            report.skipped_live += 1
            continue
        parts.append((key, rel, int(files[rel].get("size") or 0)))
    if not parts:
        return
    # every compacted group's highest seq, over all its parts (also those compacted before)
    top_seq: dict[tuple[int, int], int] = {}
    for rel in files:
        k = parse_path(rel)
        if k is not None and k.kind == "segment":
            g = (k.attempt, k.rank)
            top_seq[g] = max(top_seq.get(g, -1), k.seq)
    batch: list[tuple[Any, str, int, pa.Table]] = []
    rows = 0
    for key, rel, size in sorted(parts, key=lambda p: (p[0].attempt, p[0].rank, p[0].seq)):
        try:
            data = encodings.read_segment(fs.cat_file(join(root, rel)))
        except Exception as exc:  # noqa: BLE001 - a broken part stays where it is (verify reports it)
            report.problems.append(f"{rel}: unreadable, left out of compaction ({exc})")
            continue
        if batch and rows + data.num_rows > cfg.max_file_rows:
            _write_compact(fs, root, table, run_id, batch, top_seq, cfg, report)
            batch, rows = [], 0
        batch.append((key, rel, size, data))
        rows += data.num_rows
    if batch:
        _write_compact(fs, root, table, run_id, batch, top_seq, cfg, report)


def _write_compact(fs, root: str, table: str, run_id: str, batch: list, top_seq: dict, cfg: CompactionConfig,
                   report: CompactionReport) -> None:
    # the highest-seq part of each group is kept as an empty watermark (see module docstring)
    watermarks = [b[1] for b in batch if top_seq.get((b[0].attempt, b[0].rank)) == b[0].seq]
    seqs = {f"a{b[0].attempt}-r{b[0].rank}": b[0].seq for b in sorted(batch, key=lambda b: b[0].seq)}
    done = merge_and_swap(fs, root, table, run_id, [b[3] for b in batch], replaces=[b[1] for b in batch],
                          watermarks=watermarks, segment_seqs=seqs, cfg=cfg)
    if done is None:
        report.problems.append(f"{table} of run {run_id}: another compaction replaced these parts first")
        return
    _, size, nrows = done
    report.files_written += 1
    report.segments_replaced += len(batch)
    report.rows += nrows
    report.by_table[table] = report.by_table.get(table, 0) + nrows
    report.bytes_before += sum(b[2] for b in batch)
    report.bytes_after += size


def merge_and_swap(fs, root: str, table: str, run_id: str, inputs: list[pa.Table], *, replaces: list[str],
                   watermarks: list[str], segment_seqs: dict[str, int], cfg: CompactionConfig, tier: int = 0,
                   verify: bool = True) -> tuple[str, int, int] | None:
    """The rows of `inputs` (parts or compact files), conformed and sorted, swapped in for the files
    `replaces` (swap_in). (path, bytes, rows), or None when another compaction replaced one of those
    files first (`verify`): the new file is then removed again, and nothing changed."""
    data = conform(table, pa.concat_tables(inputs, promote_options="permissive"), strict=False, keep_extra=True)
    keys = [k for k in _SORT_KEYS.get(table, ()) if k in data.column_names]
    if keys and data.num_rows:
        order = pc.sort_indices(data, [(k, "ascending", "at_end") for k in keys])
        # a writer's parts of one name are mostly in order already: skip the costly take then
        if not pc.all(pc.equal(order, pa.array(np.arange(data.num_rows, dtype=np.uint64)))).as_py():
            data = data.take(order)
    if cfg.wall_time_resolution_us > 1:
        data = round_wall_time_column(data, cfg.wall_time_resolution_us)
    spans: dict[str, list[int]] = {}
    if table == "metrics" and data.num_rows:
        g = data.select(["attempt", "step"]).group_by("attempt").aggregate([("step", "min"), ("step", "max")])
        spans = {str(a): [int(x), int(y)] for a, x, y in zip(
            g["attempt"].to_pylist(), g["step_min"].to_pylist(), g["step_max"].to_pylist(), strict=True)}
    done = swap_in(fs, root, table, run_id, data, replaces=replaces, watermarks=watermarks,
                   segment_seqs=segment_seqs, attempt_spans=spans, cfg=cfg, tier=tier, verify=verify)
    return None if done is None else (*done, data.num_rows)


def swap_in(fs: fsspec.AbstractFileSystem, root: str, table: str, run_id: str, data: pa.Table, *,
            replaces: list[str], watermarks: list[str], segment_seqs: dict[str, int] | None = None,
            attempt_spans: dict[str, list[int]] | None = None, cfg: CompactionConfig | None = None,
            reason: str | None = None, tier: int = 0, verify: bool = False) -> tuple[str, int] | None:
    """Steps 1 and 2 of the swap (module docstring): `data` (the table's columns, sorted) becomes a
    compact file, then its record makes readers read it instead of the files in `replaces`.
    `watermarks`: the replaced parts to empty rather than delete later. `tier`: 0 for a file made of
    parts, n + 1 for one made of tier-n compact files (telemetry.maintain.live_compactor). (path, bytes)
    of the file; None when `verify` found, between the file and the record, that another compaction
    had replaced one of `replaces` (or that one is gone): the file is removed and no record written."""
    uid = uuid.uuid4().hex[:16]
    lo = hi = 0
    if "step" in data.column_names and data.num_rows:
        mm = pc.min_max(data.column("step"))
        lo, hi = int(mm["min"].as_py() or 0), int(mm["max"].as_py() or 0)
    rel = f"{partition_dir(table, run_id)}/{compact_name(lo, hi, uid)}"
    meta = {"uid": uid, "table": table, "run_id": run_id, "replaces": list(replaces),
            "segment_seqs": segment_seqs or {}, "attempt_spans": attempt_spans or {}, "tier": int(tier),
            "created_at": dt.datetime.now(dt.UTC).isoformat()}
    if reason is not None:
        meta["reason"] = reason
    body = compact_bytes(data.replace_schema_metadata({**(data.schema.metadata or {}),
                                                       META_KEY: json.dumps(meta).encode()}), cfg or CompactionConfig())
    atomic_write_bytes(fs, join(root, rel), memoryview(body))
    if verify and not _inputs_still_live(fs, root, table, run_id, replaces):
        remove(fs, join(root, rel))
        return None
    # Records are accepted in created_at order: stamp it as late as possible, so that a record
    # written after another also sorts after it (a slow compaction loses to a fast one it raced).
    meta["created_at"] = dt.datetime.now(dt.UTC).isoformat()
    record = {"format": 1, "file": rel, "rows": data.num_rows, "watermarks": list(watermarks), "gc_done": False,
              **meta}
    atomic_write_bytes(fs, join(root, record_path(run_id, table, uid)), json.dumps(record, indent=1).encode())
    return rel, body.size


def _inputs_still_live(fs, root: str, table: str, run_id: str, replaces: list[str]) -> bool:
    present = set(list_files(fs, root, partition_dir(table, run_id)))
    wanted = set(replaces)
    return wanted <= present and not wanted & resolve(read_records(fs, root, run_id=run_id), present).replaced


def compact_bytes(data: pa.Table, cfg: CompactionConfig) -> pa.Buffer:
    """Parquet of a compacted file: dictionary names, DELTA_BINARY_PACKED steps and times,
    BYTE_STREAM_SPLIT (or PLAIN) floats, zstd, large row groups, sorting columns declared."""
    opts = encodings.parquet_options(data.schema)
    if cfg.value_encoding == "PLAIN":
        opts["column_encoding"] = {k: v for k, v in opts["column_encoding"].items() if v != "BYTE_STREAM_SPLIT"}
        opts["use_dictionary"] = [n for n in data.column_names if n not in opts["column_encoding"]
                                  and not pa.types.is_floating(data.schema.field(n).type)]
    table = data.schema.metadata.get(b"flightlog.table", b"").decode() if data.schema.metadata else ""
    keys = [k for k in _SORT_KEYS.get(table, ()) if k in data.column_names]
    sink = pa.BufferOutputStream()
    pq.write_table(data, sink, row_group_size=cfg.row_group_rows, compression_level=cfg.zstd_level,
                   sorting_columns=[pq.SortingColumn(data.column_names.index(k)) for k in keys] or None,
                   **opts)
    return sink.getvalue()


__all__ = ["CompactionConfig", "CompactionReport", "all_runs", "compact", "compact_bytes", "compact_closed_run",
           "compact_fs", "merge_and_swap", "runs_in", "swap_in"]
