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

import json
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from data_schema.layout import join, parse_path, partition_dir
from data_schema.tables import TABLES, schema
from data_schema.validation import conform
from telemetry.maintain.compaction import swap_in
from telemetry.maintain.manifest import refresh_manifest
from telemetry.read.runs import resolve_run
from telemetry.store import encodings, staging
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import list_files, open_fs
from telemetry.store.liveness import busy_groups, live_filter, read_records
from telemetry.store.wall_time import METRICS_WALL_TIME_RESOLUTION_US, round_wall_time_column

_log = logging.getLogger("flightlog.importers")


@dataclass(slots=True)
class ReplaceReport:
    run_id: str
    table: str
    rows_written: int       # new rows
    rows_replaced: int      # earlier rows with a key of the new rows (dropped)
    rows_kept: int          # earlier rows kept as they were
    file: str | None        # the compact file written (relative to the archive root)


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
    run_id = resolve_run(fs, root, run)
    sch = schema(table)
    new = _rows_of_run(table, rows, run_id)
    if table == "metrics":  # the Writer's rule for metric wall times (milliseconds)
        new = round_wall_time_column(new, METRICS_WALL_TIME_RESOLUTION_US)

    files = list_files(fs, root, partition_dir(table, run_id))
    records = read_records(fs, root, run_id=run_id)
    keep, _ = live_filter(files, records)
    busy = busy_groups(fs, root, table, run_id)
    replaced_files, old_parts = [], []
    for rel in sorted(keep):
        k = parse_path(rel)
        if k is None or (k.kind == "segment" and (k.attempt, k.rank) in busy):
            continue
        old_parts.append(encodings.read_segment(fs.cat_file(join(root, rel))))
        replaced_files.append(rel)
    old = pa.concat_tables([_rows_of_run(table, p, run_id) for p in old_parts]) if old_parts else sch.empty_table()
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

    rel, _ = swap_in(fs, root, table, run_id, data, replaces=replaced_files, watermarks=watermarks,
                     reason="rows replaced by key " + ",".join(key))
    try:
        refresh_manifest(archive_url, fs, root, storage_options)
    except Exception as exc:  # noqa: BLE001 - the rows are in; only readers that cannot list miss them
        _log.warning("flightlog: the manifest was not rewritten after replacing %s rows of run %r (%r); "
                     "run `flightlog index`", table, run_id, exc)
    return ReplaceReport(run_id, table, new.num_rows, int(pc.sum(drop).as_py() or 0) if old.num_rows else 0,
                         kept.num_rows, rel)


def _rows_of_run(table: str, data: pa.Table, run_id: str) -> pa.Table:
    """`data` as rows of run `run_id`, attempt 0, rank 0 (rows replaced by key belong to no writer):
    laid out by data_schema's one conform rule (lenient), the writer constants set by staging."""
    staged = conform(table, data, strict=False).drop_columns(list(staging.constant_columns(table)))
    return staging.full_table(table, staged, run_id=run_id, attempt=0, rank=0)
