"""Building a run's level-of-detail (LOD) file: the maintain path's half of telemetry.read.lod.

Compaction calls `rebuild_lod` after it swapped in a run's compact metric files: the new LOD file
covers exactly the live compact files and records the attempt spans of its journey filter, so a
reader (telemetry.read.lod.choose_lod) uses it only while those files stay live. What the rows
mean and how curves read them is telemetry.read.lod's; this module only writes the file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema.layout import join, lod_dir, lod_path, parse_lod_path, parse_path, partition_dir
from telemetry.read.lod import (
    DEFAULT_WIDTHS,
    META_KEY,
    ROW_GROUP_ROWS,
    build_lod_table,
    choose_lod,
    lod_infos,
    spans_of,
)
from telemetry.store.fs import atomic_write_bytes, is_local, list_files
from telemetry.store.liveness import live_filter, read_records


def rebuild_lod(fs: fsspec.AbstractFileSystem, root: str, run_id: str, *,
                widths: tuple[int, ...] = DEFAULT_WIDTHS) -> int:
    """Build the run's LOD over its live compact metric files; rows written (0: nothing to do, or the
    newest LOD already covers those files with the same spans and widths)."""
    records = read_records(fs, root, run_id=run_id)
    files = list_files(fs, root, partition_dir("metrics", run_id))
    live, _ = live_filter(files, records)
    covers = sorted(r for r in live if (k := parse_path(r)) is not None and k.kind == "compact")
    if not covers:
        return 0
    tmp = None
    try:
        if is_local(fs):
            local = {r: join(root, r) for r in live}
        else:  # DuckDB reads local files only: fetch the run's metric files once
            tmp = tempfile.mkdtemp(prefix="flightlog-lod-")
            local = {r: os.path.join(tmp, r.replace("/", "__")) for r in live}
            fs.get([join(root, r) for r in local], list(local.values()))
        spans = spans_of([local[r] for r in sorted(live)])
        existing = lod_infos(fs, root, [r for r in list_files(fs, root, lod_dir(run_id)) if parse_lod_path(r)])
        current = choose_lod(existing, live)
        if current is not None and set(current.covers) == set(covers) and current.spans == spans \
                and current.widths == tuple(widths):
            return 0
        table, ranks = build_lod_table(run_id, [local[r] for r in covers], spans, widths)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {"covers": covers, "spans": {str(a): list(s) for a, s in spans.items()}, "widths": list(widths),
            "ranks": ranks, "per_rank": len(ranks) > 1, "created_at": dt.datetime.now(dt.UTC).isoformat()}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="zstd",
                   use_dictionary=["run_id", "name"], column_encoding={
                       "width": "DELTA_BINARY_PACKED", "rank": "DELTA_BINARY_PACKED", "bucket": "DELTA_BINARY_PACKED",
                       "step_lo": "DELTA_BINARY_PACKED", "step_hi": "DELTA_BINARY_PACKED"})
    atomic_write_bytes(fs, join(root, lod_path(run_id, uuid.uuid4().hex[:16])), memoryview(sink.getvalue()))
    return table.num_rows


__all__ = ["rebuild_lod"]
