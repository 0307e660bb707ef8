"""Which files of an archive are live, and which writers are alive: the rules every path shares.

Compaction swaps a run's small `part-*` segments for a large `compact-*` file through a record,
`_manifest/compactions/<run_id>/<table>-<uid>.json`, written after the compact file: a compact file
without an accepted record is invisible, and the parts an accepted record lists are replaced.
Records are accepted in (created_at, uid) order; a record that lists a part an earlier accepted
record already replaced (two compactions raced) is rejected. Every reader, the compactor, the
manifest, publishing and the importers decide liveness here, so they never disagree.

A writer is alive while its lease says so (`scan_heartbeats` only: the process on its own host,
the lease's renewals seen by this process or the store's clock elsewhere, never the writer's
clock; telemetry.store.lease explains why): its staged files and its segments belong to it (or to
recovery) and are left alone; so are the segments of a writer group that still has staged files
or a taken-over writer's late segment (`busy_groups`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import fsspec

from data_schema.layout import (
    MANIFEST_DIR,
    SEGMENT_SUFFIX,
    join,
    parse_path,
    partition_dir,
    staging_dir,
    validate_run_id,
)
from telemetry.store import heartbeat, lease
from telemetry.store.fs import list_files, modified_at

COMPACTIONS_DIR = f"{MANIFEST_DIR}/compactions"
META_KEY = b"flightlog.compaction"  # Parquet metadata of a compact file: the step spans it covers


def record_path(run_id: str, table: str, uid: str) -> str:
    return f"{COMPACTIONS_DIR}/{validate_run_id(run_id)}/{table}-{uid}.json"


def record_path_of(compact_rel: str) -> str | None:
    """The record path a compact file's own path implies (stores that cannot list use it)."""
    key = parse_path(compact_rel)
    if key is None or key.kind != "compact":
        return None
    uid = compact_rel.rsplit("-", 1)[-1].removesuffix(SEGMENT_SUFFIX)
    return record_path(key.run_id, key.table, uid)


def read_records(fs: fsspec.AbstractFileSystem, root: str, *, run_id: str | None = None,
                 compact_rels: Iterable[str] | None = None, cache: dict[str, dict] | None = None) -> list[dict]:
    """Compaction records of the archive (or of one run). With `compact_rels` the records are read
    at the paths those compact files imply instead of listing (http archives cannot list)."""
    if compact_rels is not None:
        rels = [r for r in (record_path_of(c) for c in compact_rels) if r]
    else:
        folder = COMPACTIONS_DIR if run_id is None else f"{COMPACTIONS_DIR}/{validate_run_id(run_id)}"
        rels = [r for r in list_files(fs, root, folder) if r.endswith(".json") and ".tmp-" not in r]
    out = []
    for rel in sorted(rels):
        rec = None if cache is None else cache.get(rel)
        if rec is None:
            try:
                rec = json.loads(fs.cat_file(join(root, rel)))
            except (FileNotFoundError, ValueError, OSError):
                continue  # no record (yet): its compact file stays invisible
            if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not isinstance(
                    rec.get("replaces"), list):
                continue
            rec["_rel"] = rel
            if cache is not None:
                cache[rel] = rec
        out.append(rec)
    return out


@dataclass(slots=True)
class Resolution:
    accepted: list[dict]
    rejected: list[dict]
    replaced: set[str]          # files no reader should read
    compacts: set[str]          # compact files readers should read


def resolve(records: list[dict], present: set[str]) -> Resolution:
    """Which records count, given the data files `present`. Deterministic for every reader."""
    res = Resolution([], [], set(), set())
    # A compact file that a later record merged into a higher tier (telemetry.maintain.live_compactor)
    # counts as present after its deletion: its record still says which parts it replaced.
    present = set(present)
    missing = {rec["file"] for rec in records} - present
    while missing:
        found = {f for rec in records if rec["file"] in present for f in rec["replaces"] if f in missing}
        if not found:
            break
        present |= found
        missing -= found
    for rec in sorted(records, key=lambda r: (str(r.get("created_at", "")), str(r.get("uid", "")))):
        replaces = set(rec["replaces"])
        if rec["file"] not in present or replaces & res.replaced or rec["file"] in res.replaced:
            res.rejected.append(rec)
            continue
        res.accepted.append(rec)
        res.replaced |= replaces
        res.compacts.add(rec["file"])
    res.compacts -= res.replaced
    return res


def live_filter(rels: Iterable[str], records: list[dict]) -> tuple[set[str], set[str]]:
    """(files to read, files to skip) among data-file paths `rels`: replaced parts and compact
    files without an accepted record are skipped."""
    rels = set(rels)
    res = resolve(records, rels)
    skip = {r for r in rels if r in res.replaced or (
        (k := parse_path(r)) is not None and k.kind == "compact" and r not in res.compacts)}
    return rels - skip, skip


# ---- writers ----------------------------------------------------------------------------------

def scan_heartbeats(fs: fsspec.AbstractFileSystem, root: str, *, force: bool = False,
                    observer: lease.LeaseObserver | None = None) -> tuple[set[tuple[str, int, int]], list[str]]:
    """(run_id, attempt, rank) of the live writers, and the lease paths of dead ones.

    A lease is dead when a fence above its generation exists (it was taken over), when its
    process is gone (same host: exact), or when it expired (other hosts: `lease.LeaseObserver`,
    no writer clock involved). A first look at another host's lease that the store's clock
    cannot settle counts as alive. `force`: every lease counts as dead (recover(force=True)).
    An unreadable lease is skipped: it is not known to be alive, and the next scan reads it again.
    """
    observer = lease.OBSERVER if observer is None else observer
    listing = list_files(fs, root, heartbeat.LIVE_DIR, detail=True)
    fences: dict[tuple[str, int, int], int] = {}
    leases: list[tuple[str, tuple[str, int, int]]] = []
    for rel in listing:
        parsed = heartbeat.parse_live_name(rel)
        if parsed is not None and parsed[0] == "fence":
            fences[parsed[1]] = max(fences.get(parsed[1], 0), parsed[2]["gen"])
        elif parsed is not None and parsed[0] == "lease":
            leases.append((rel, parsed[1]))
    live: set[tuple[str, int, int]] = set()
    dead: list[str] = []
    store_clock: list[float | None] = []  # probed once, and only when a remote lease needs it
    observer.forget_except(root, ((root, rel) for rel, _g in leases))
    for rel, group in leases:
        path = join(root, rel)
        try:
            hb = heartbeat.parse_heartbeat(fs.cat_file(path))
        except OSError:  # gone between the listing and the read, or the store failed: unknown
            continue
        if hb is None:
            continue
        if force or fences.get(group, 0) > hb["generation"]:
            dead.append(path)
            continue
        alive = heartbeat.writer_is_alive(hb)
        if alive is None:
            def store_age(info=listing[rel]) -> float | None:
                if not store_clock:
                    store_clock.append(lease.store_now(fs, root))
                mtime = modified_at(info)
                return None if store_clock[0] is None or mtime is None else store_clock[0] - mtime
            alive = observer.judge((root, rel), hb, store_age) is not False
        if alive:
            live.add((hb["run_id"], hb["attempt"], hb["rank"]))
        else:
            dead.append(path)
    return live, dead


def live_writers(fs: fsspec.AbstractFileSystem, root: str) -> set[tuple[str, int, int]]:
    """(run_id, attempt, rank) of the writers that are alive (see `scan_heartbeats`)."""
    return scan_heartbeats(fs, root)[0]


def busy_groups(fs: fsspec.AbstractFileSystem, root: str, table: str, run_id: str,
                live: set[tuple[str, int, int]] | None = None) -> set[tuple[int, int]]:
    """(attempt, rank) of the writer groups of `run_id` whose `table` segments must be left alone
    (compaction, rows replaced by key): the writer is alive, or staged files of the group wait for
    it or for recovery, which will name a segment with a higher seq, or a taken-over writer landed a
    segment recovery has yet to remove (`lease.remove_zombies`). `live`: `live_writers()`, when the
    caller has read it already."""
    live = live_writers(fs, root) if live is None else live
    alive = {(a, r) for (rid, a, r) in live if rid == run_id}
    staged = {(k.attempt, k.rank) for k in map(parse_path, list_files(fs, root, staging_dir(table, run_id)))
              if k is not None}
    ranges = lease.taken_ranges(fs, root, run_id).get((table, run_id))
    zombies: set[tuple[int, int]] = set()
    if ranges:
        for rel in lease.zombie_segments(list_files(fs, root, partition_dir(table, run_id)), ranges):
            key = parse_path(rel)
            zombies.add((key.attempt, key.rank))
    return alive | staged | zombies
