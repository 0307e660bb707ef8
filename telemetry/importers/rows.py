"""Add rows to one table of an existing run, replacing earlier rows with the same key.

Evaluations and memorization scores arrive after training (an eval harness, a later analysis),
so they are written to a run that a trainer recorded. Opening a `Writer` for that would start a
new attempt; instead the rows go through the same swap compaction uses (telemetry.maintain.compaction):
one compact file holding the run's earlier rows of that table minus those whose key the new
rows carry, plus the new rows, and a compaction record that makes readers skip the files it
replaces. A re-import therefore replaces, never duplicates, and readers never see a mix.
Files of a live writer (fresh heartbeat or staged data) are left alone, as compaction does.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from data_schema.layout import compact_name, join, parse_path, partition_dir, staging_dir
from data_schema.tables import TABLES, schema
from telemetry.maintain.compaction import CompactionConfig, compact_bytes
from telemetry.read.runs import resolve_run
from telemetry.store import encodings, staging
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import atomic_write_bytes, list_files, open_fs
from telemetry.store.liveness import META_KEY, live_filter, live_writers, read_records, record_path
from telemetry.store.wall_time import METRICS_WALL_TIME_RESOLUTION_US, round_wall_time_column


@dataclass(slots=True)
class ReplaceReport:
    run_id: str
    table: str
    rows_written: int       # new rows
    rows_replaced: int      # earlier rows with a key of the new rows (dropped)
    rows_kept: int          # earlier rows kept as they were
    file: str | None        # the compact file written (relative to the archive root)


def resolve_run_id(fs, root: str, run: str) -> str:
    """A run's id, display name or name -> the id of a run that has files in the archive; UnknownRunError
    otherwise (telemetry.read.runs: the rule every command shares)."""
    return resolve_run(fs, root, run)


def _live_groups(fs, root: str, run_id: str, table: str) -> set[tuple[int, int]]:
    live = {(a, r) for (rid, a, r) in live_writers(fs, root) if rid == run_id}
    staged = {(k.attempt, k.rank) for k in map(parse_path, list_files(fs, root, staging_dir(table, run_id)))
              if k is not None}
    return live | staged


def _key_strings(data: pa.Table, key: list[str]) -> list[str]:
    cols = [data.column(k).to_pylist() for k in key]
    return [json.dumps(v, default=str) for v in zip(*cols, strict=True)] if cols else []


def replace_rows(archive_url, table: str, run: str, rows: pa.Table, key: list[str], *,
                 storage_options: dict | None = None) -> ReplaceReport:
    """Put `rows` (columns of `table`, without run_id) into run `run`; earlier rows with the same
    `key` values are replaced. Returns what was written."""
    if table not in TABLES:
        raise ArchiveError(f"unknown table {table!r}")
    fs, root = open_fs(archive_url, storage_options)
    run_id = resolve_run_id(fs, root, run)
    sch = schema(table)
    new = staging.full_table(table, _conform(table, rows), run_id=run_id, attempt=0, rank=0)
    if table == "metrics":  # the Writer's rule for metric wall times (milliseconds)
        new = round_wall_time_column(new, METRICS_WALL_TIME_RESOLUTION_US)

    files = list_files(fs, root, partition_dir(table, run_id))
    records = read_records(fs, root, run_id=run_id)
    keep, _ = live_filter(files, records)
    busy = _live_groups(fs, root, run_id, table)
    replaced_files, old_parts = [], []
    for rel in sorted(keep):
        k = parse_path(rel)
        if k is None or (k.kind == "segment" and (k.attempt, k.rank) in busy):
            continue
        old_parts.append(encodings.read_segment(fs.cat_file(join(root, rel))))
        replaced_files.append(rel)
    old = (pa.concat_tables([staging.full_table(table, _conform(table, p), run_id=run_id, attempt=0, rank=0)
                             for p in old_parts]) if old_parts else sch.empty_table())
    new_keys = set(_key_strings(new, key))
    drop = pa.array([s in new_keys for s in _key_strings(old, key)], pa.bool_())
    kept = old.filter(pc.invert(drop)) if old.num_rows else old
    data = pa.concat_tables([kept.select(sch.names).cast(sch), new.select(sch.names).cast(sch)])

    # the highest-seq part of each writer group stays as an empty watermark (see telemetry.maintain.compaction)
    top: dict[tuple[int, int], int] = {}
    for rel in files:
        k = parse_path(rel)
        if k is not None and k.kind == "segment":
            top[(k.attempt, k.rank)] = max(top.get((k.attempt, k.rank), -1), k.seq)
    watermarks = [r for r in replaced_files
                  if (k := parse_path(r)).kind == "segment" and top[(k.attempt, k.rank)] == k.seq]

    uid = uuid.uuid4().hex[:16]
    steps = pc.min_max(data.column("step")) if "step" in data.column_names and data.num_rows else None
    lo = int(steps["min"].as_py() or 0) if steps else 0
    hi = int(steps["max"].as_py() or 0) if steps else 0
    rel = f"{partition_dir(table, run_id)}/{compact_name(lo, hi, uid)}"
    now = dt.datetime.now(dt.UTC).isoformat()
    meta = {"uid": uid, "table": table, "run_id": run_id, "replaces": replaced_files, "segment_seqs": {},
            "attempt_spans": {}, "created_at": now, "reason": "rows replaced by key " + ",".join(key)}
    body = compact_bytes(data.replace_schema_metadata({**(sch.metadata or {}), META_KEY: json.dumps(meta).encode()}),
                         CompactionConfig())
    atomic_write_bytes(fs, join(root, rel), memoryview(body))
    record = {"format": 1, "file": rel, "rows": data.num_rows, "watermarks": watermarks, "gc_done": False, **meta}
    atomic_write_bytes(fs, join(root, record_path(run_id, table, uid)), json.dumps(record, indent=1).encode())
    _refresh_manifest(archive_url, fs, root, storage_options)
    return ReplaceReport(run_id, table, new.num_rows, int(pc.sum(drop).as_py() or 0) if old.num_rows else 0,
                         kept.num_rows, rel)


def _conform(table: str, rows: pa.Table) -> pa.Table:
    """The table's columns (minus the writer constants) in schema types; missing ones as nulls."""
    out = {}
    for f in staging.staged_schema(table):
        out[f.name] = (rows.column(f.name).cast(f.type) if f.name in rows.column_names
                       else pa.nulls(rows.num_rows, f.type))
    return pa.table(out)


def _refresh_manifest(url, fs, root: str, storage_options: dict | None) -> None:
    """Stores that cannot list read the manifest: rewrite it when the archive has one."""
    from telemetry.maintain.manifest import read_manifest, write_manifest

    try:
        if read_manifest(fs, root) is not None:
            write_manifest(url, storage_options)
    except Exception:  # noqa: BLE001 - the rows are in; only stores that cannot list miss them until `flightlog index`
        pass
