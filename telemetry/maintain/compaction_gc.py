"""Step 3 of the compaction swap (telemetry.maintain.compaction): deleting what a swap made
unreadable, once no reader can still be reading it.

A reader that listed a run's files before a compaction record appeared may still read the parts
that record replaced; so replaced files stay for `grace_s` seconds after the record was written.
After that, for one run:
- the parts an accepted record replaced are deleted, except each writer group's highest-seq
  part, which becomes an empty "watermark" (recovery and writers read the next seq from it);
- a rejected record (it lost a race with another compaction) goes, with its compact file;
- a compact file without any record (its compaction died before writing one) goes;
- LOD files other than the one readers choose go;
- a record whose compact file a higher tier merged and deleted goes a grace period after its own
  parts went (telemetry.store.liveness.resolve counts such a file as present while the record is).
A grace of 0 deletes everything a compaction just replaced in the same pass.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import fsspec

from data_schema.layout import join, lod_dir, parse_lod_path, parse_path, partition_dir
from data_schema.tables import TABLES, schema
from telemetry.read.lod import choose_lod, lod_infos
from telemetry.store import encodings
from telemetry.store.fs import atomic_write_bytes, list_files, modified_at, remove
from telemetry.store.liveness import live_filter, read_records, resolve


@dataclass(slots=True)
class Collected:
    removed: int = 0                                    # files deleted or emptied into a watermark
    problems: list[str] = field(default_factory=list)


def collect_garbage(fs: fsspec.AbstractFileSystem, root: str, run_id: str, grace_s: float) -> Collected:
    """Delete the run's files that compaction replaced more than `grace_s` seconds ago (see above)."""
    out = Collected()
    now = dt.datetime.now(dt.UTC)
    records = read_records(fs, root, run_id=run_id)
    present: dict[str, dict] = {}
    for table in TABLES:
        present.update(list_files(fs, root, partition_dir(table, run_id), detail=True))
    res = resolve(records, set(present))

    def old(rec: dict, stamp: str = "created_at") -> bool:
        try:
            return (now - dt.datetime.fromisoformat(rec[stamp])).total_seconds() >= grace_s
        except (KeyError, TypeError, ValueError):
            return False  # a record without a readable time is never old enough to act on

    for rec in res.accepted:
        if rec.get("gc_done") or not old(rec):
            continue
        marks = set(rec.get("watermarks") or ())
        for rel in rec["replaces"]:
            if rel not in present:
                continue
            if rel in marks:
                key = parse_path(rel)
                empty = encodings.segment_bytes(schema(key.table).empty_table())
                atomic_write_bytes(fs, join(root, rel), memoryview(empty))
            else:
                remove(fs, join(root, rel))
            out.removed += 1
        done = {k: v for k, v in rec.items() if k != "_rel"} | {"gc_done": True, "gc_done_at": now.isoformat()}
        atomic_write_bytes(fs, join(root, rec["_rel"]), json.dumps(done, indent=1).encode())
    for rec in res.accepted:
        # merged into a higher tier, its file and parts deleted a grace period ago: the record says
        # nothing any more (a reader that listed those parts has read its records by now)
        if rec["file"] not in present and rec.get("gc_done") and old(rec, "gc_done_at") \
                and not any(r in present for r in rec["replaces"]):
            remove(fs, join(root, rec["_rel"]))
    for rec in res.rejected:
        if old(rec):
            if rec["file"] in present and rec["file"] not in res.compacts:
                remove(fs, join(root, rec["file"]))
                out.removed += 1
            remove(fs, join(root, rec["_rel"]))
    known = {r["file"] for r in records}
    for rel, info in present.items():
        key = parse_path(rel)
        if key is not None and key.kind == "compact" and rel not in known and age_s(info) >= grace_s:
            remove(fs, join(root, rel))  # a compaction died between its file and its record
            out.removed += 1
    try:
        out.removed += _remove_unused_lods(fs, root, run_id, grace_s, present, records)
    except Exception as exc:  # noqa: BLE001 - leftover LOD files cost only disk space; reported, not raised
        out.problems.append(f"metrics_lod of run {run_id}: cleanup failed: {exc!r}")
    return out


def _remove_unused_lods(fs: fsspec.AbstractFileSystem, root: str, run_id: str, grace_s: float,
                        present: dict[str, dict], records: list[dict]) -> int:
    """Delete the run's LOD files that readers would not choose (older than `grace_s`); how many."""
    lods = list_files(fs, root, lod_dir(run_id), detail=True)
    infos = lod_infos(fs, root, [r for r in lods if parse_lod_path(r)])
    live, _ = live_filter([r for r in present if (k := parse_path(r)) and k.table == "metrics"], records)
    chosen = choose_lod(infos, live)
    removed = 0
    for rel in infos:
        if (chosen is None or rel != chosen.rel) and age_s(lods[rel]) >= grace_s:
            remove(fs, join(root, rel))
            removed += 1
    return removed


def age_s(info: dict[str, Any]) -> float:
    """Seconds since a listed file was last written; 0 when its filesystem does not say (never old
    enough to delete, unless the grace is 0)."""
    mtime = modified_at(info)
    return 0.0 if mtime is None else time.time() - mtime

__all__ = ["Collected", "age_s", "collect_garbage"]
