"""Turn the write-ahead of dead writers into Parquet, and mark their runs crashed.

Idempotent and safe while writers live:
- a staged file whose (table, run, attempt, file rank) already has a segment with seq >= its
  seq was converted before (a crash between "segment written" and "staged deleted"): it is
  deleted, not converted again;
- a writer's staged files are left alone while it lives: on its own host while its process
  (pid and start time) exists, however old its lease (`_staging/_live/...`) — a writer
  starved of CPU is slow, not dead —, elsewhere while its lease is renewed (telemetry.store.lease:
  no clock of the writer's is compared). That writer will put them into its own next segment, and
  converting them here would double their rows (`force=True` overrides, for a writer known dead).
  A group is fenced (its generation bumped) before anything of it is read, so a writer that comes
  back writes no further segment there (it moves to a new file slot); see lease.py. A writer
  that finds its staged files gone (recovery took a remote writer for dead during a long
  stall) leaves those batches out of its segment; and a conversion that finds, once written,
  a newer segment of the same writer (it segmented them meanwhile) is taken back;
- staged batches a writer spooled on this machine's local disk while the store was away, and
  that it never uploaded because it died, are uploaded first (telemetry.write.spool.upload_orphans);
- an attempt whose latest `attempts` row has no end_status and no live writer gets a row
  with end_status 'crashed', and its run a 'crashed' `runs` row unless a later attempt exists.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from data_schema.layout import (
    STAGING_DIR,
    FileKey,
    is_temp,
    join,
    parse_path,
    partition_dir,
    segment_path,
)
from data_schema.tables import TABLES, schema
from telemetry.store import encodings, lease, liveness, staging
from telemetry.store.fs import atomic_write_bytes, list_files, modified_at, open_fs, remove
from telemetry.write.spool import upload_orphans

_TEMP_AGE_S = 300.0


@dataclass(slots=True)
class RecoveryReport:
    converted_batches: int = 0
    segments_written: int = 0
    runs_marked_crashed: int = 0
    skipped: int = 0                  # staged files left alone: their writer is alive
    staged_deleted: int = 0           # staged files removed (converted now or before)
    truncated_files: int = 0          # staged files with a torn tail (complete batches kept)
    attempts_marked_crashed: int = 0
    temps_removed: int = 0
    spooled_uploaded: int = 0         # staged files of dead writers uploaded from the local spool
    taken_back: int = 0               # conversions removed again: the writer segmented the batches meanwhile
    zombies_removed: int = 0          # segments a fenced writer landed after its group was converted
    problems: list[str] = field(default_factory=list)


def recover(url: str | os.PathLike | None = None, *, storage_options: dict | None = None, force: bool = False,
            remove_temp: bool = False, temp_age_s: float = _TEMP_AGE_S, spool_dir: str | None = None,
            runs: Collection[str] | None = None) -> RecoveryReport:
    """Convert staged batches of dead writers to segments; mark their attempts/runs crashed.

    `spool_dir`: the writers' WriterConfig.spool_dir when it was not the default. `runs`: only these
    runs' staged batches and attempts (a reader about to show them; the writers' leases are still read
    whole, to know who is alive), so the cost follows the runs looked at, not the archive."""
    fs, root = open_fs(url, storage_options)
    report = RecoveryReport()
    try:
        report.spooled_uploaded = upload_orphans(fs, root, spool_dir)
    except Exception as exc:  # noqa: BLE001 - a spool problem must not stop recovery of the archive
        report.problems.append(f"local spool: {exc!r}")
    live, dead = liveness.scan_heartbeats(fs, root, force=force)
    lease.take_over(fs, root, dead)  # fence first: a writer that comes back writes nothing more there
    for path in dead:  # a dead writer's lease goes with its recovery
        remove(fs, path)
    # one listing of the staging folder (it holds only live writers' last batches), filtered to `runs`
    staged = list_files(fs, root, STAGING_DIR)
    groups: dict[tuple[str, str, int, int], list[tuple[FileKey, str]]] = {}
    for rel in staged:
        key = parse_path(rel)
        if key is not None and key.kind == "staged" and (runs is None or key.run_id in runs):
            groups.setdefault((key.table, key.run_id, key.attempt, key.rank), []).append((key, rel))
    partitions: dict[tuple[str, str], dict[str, Any]] = {}
    for (table, run_id, attempt, rank), files in sorted(groups.items()):
        if (run_id, attempt, rank) in live:
            report.skipped += len(files)
            continue
        if (table, run_id) not in partitions:
            partitions[(table, run_id)] = list_files(fs, root, partition_dir(table, run_id))
        covered = _max_segment_seq(partitions[(table, run_id)], attempt, rank)
        _convert_group(fs, root, table, run_id, attempt, rank, files, covered, report)
    report.zombies_removed = lease.remove_zombies(fs, root)
    _mark_crashed(fs, root, live, report, runs)
    if remove_temp:
        _remove_old_temps(fs, root, temp_age_s, report)
    return report


def _max_segment_seq(files: dict[str, Any], attempt: int, rank: int) -> int:
    seqs = [k.seq for k in map(parse_path, files) if k and k.kind == "segment" and k.attempt == attempt
            and k.rank == rank and k.seq is not None]
    return max(seqs, default=-1)


def _convert_group(fs, root: str, table: str, run_id: str, attempt: int, rank: int,
                   files: list[tuple[FileKey, str]], covered: int, report: RecoveryReport) -> None:
    todo = []
    for key, rel in files:
        if key.seq is not None and key.seq <= covered:
            remove(fs, join(root, rel))  # already in a segment
            report.staged_deleted += 1
        else:
            todo.append((key, rel))
    if not todo:
        return
    parts: list[pa.Table] = []
    for _key, rel in sorted(todo, key=lambda kr: kr[0].seq or 0):
        try:
            dec = staging.decode_staged(fs.cat_file(join(root, rel)), table)
        except FileNotFoundError:
            continue  # another recovery got there first
        if dec.truncated:
            report.truncated_files += 1
        if dec.data is None or dec.data.num_rows == 0:
            continue
        consts = dec.constants
        try:
            parts.append(staging.full_table(
                table, dec.data, run_id=consts.get("run_id", run_id),
                attempt=int(consts.get("attempt", attempt)), rank=int(consts.get("rank", rank))))
        except (pa.ArrowException, KeyError, ValueError) as exc:
            report.problems.append(f"{rel}: unreadable staged batch ({exc}); left in place")
            return
        report.converted_batches += dec.batches
    seq = max(k.seq or 0 for k, _ in todo)
    if parts:
        data = pa.concat_tables(parts)
        path = join(root, segment_path(table, run_id, attempt, rank, seq))
        lease.record_conversion(fs, root, table, run_id, attempt, rank, min(k.seq or 0 for k, _ in todo), seq)
        atomic_write_bytes(fs, path, memoryview(encodings.segment_bytes(data)))
        if _max_segment_seq(list_files(fs, root, partition_dir(table, run_id)), attempt, rank) > seq:
            # Its writer was alive after all (a remote one that stalled) and segmented these batches
            # meanwhile: that newer segment holds every staged file still present, ours included
            # (none is deleted yet). Keeping ours too would double them; the writer removes the files.
            remove(fs, path)
            report.taken_back += 1
            return
        report.segments_written += 1
    for _key, rel in todo:
        remove(fs, join(root, rel))
        report.staged_deleted += 1


def _read_rows(fs, root: str, table: str, runs: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Every row of a (small, state) table, or of these runs' partitions only."""
    rows: list[dict[str, Any]] = []
    rels = list_files(fs, root, table) if runs is None else [
        rel for run_id in sorted(runs) for rel in list_files(fs, root, partition_dir(table, run_id))]
    for rel in rels:
        key = parse_path(rel)
        if key is None or key.kind == "staged":
            continue
        try:
            rows.extend(encodings.read_segment(fs.cat_file(join(root, rel))).to_pylist())
        except (FileNotFoundError, pa.ArrowException):
            continue
    return rows


def crashed_attempts(fs, root: str) -> set[tuple[str, int]]:
    """(run_id, attempt) of the attempts whose latest `attempts` row says they crashed."""
    attempts = _latest(_read_rows(fs, root, "attempts"), "run_id", "attempt")
    return {(run_id, attempt) for (run_id, attempt), row in attempts.items() if row.get("end_status") == "crashed"}


def _latest(rows: list[dict[str, Any]], *key: str) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    floor = dt.datetime.min.replace(tzinfo=dt.UTC)
    for r in rows:
        k = tuple(r[c] for c in key)
        if k not in out or (r.get("updated_at") or floor) >= (out[k].get("updated_at") or floor):
            out[k] = r
    return out


def _mark_crashed(fs, root: str, live: set[tuple[str, int, int]], report: RecoveryReport,
                  only: Collection[str] | None = None) -> None:
    attempts = _latest(_read_rows(fs, root, "attempts", only), "run_id", "attempt")
    if not attempts:
        return
    runs = _latest(_read_rows(fs, root, "runs", only), "run_id")
    live_attempts = {(r, a) for r, a, _rank in live}
    top_attempt: dict[str, int] = {}
    for run_id, attempt in attempts:
        top_attempt[run_id] = max(top_attempt.get(run_id, -1), attempt)
    now = dt.datetime.now(dt.UTC)
    for (run_id, attempt), row in sorted(attempts.items()):
        if row.get("end_status") is not None or (run_id, attempt) in live_attempts:
            continue
        _append_row(fs, root, "attempts", run_id, attempt,
                    {**row, "ended_at": now, "end_status": "crashed", "updated_at": now})
        report.attempts_marked_crashed += 1
        run_row = runs.get((run_id,))
        if attempt == top_attempt[run_id] and run_row is not None and run_row.get("status") == "running":
            _append_row(fs, root, "runs", run_id, attempt, {**run_row, "status": "crashed", "updated_at": now})
            report.runs_marked_crashed += 1


def _append_row(fs, root: str, table: str, run_id: str, attempt: int, row: dict[str, Any]) -> None:
    """One state row as a new segment after every file of that (attempt, rank 0)."""
    seqs = [-1]
    for folder in (partition_dir(table, run_id), f"{STAGING_DIR}/{partition_dir(table, run_id)}"):
        for rel in list_files(fs, root, folder):
            key = parse_path(rel)
            if key and key.attempt == attempt and key.rank == 0 and key.seq is not None:
                seqs.append(key.seq)
    data = pa.Table.from_pylist([row], schema=schema(table))
    path = join(root, segment_path(table, run_id, attempt, 0, max(seqs) + 1))
    atomic_write_bytes(fs, path, memoryview(encodings.segment_bytes(data)))


def _remove_old_temps(fs, root: str, age_s: float, report: RecoveryReport) -> None:
    now = time.time()
    for top in (*TABLES, STAGING_DIR, "_manifest", "metrics_lod"):
        for rel, info in list_files(fs, root, top, detail=True).items():
            if not is_temp(rel):
                continue
            mtime = modified_at(info)
            if mtime is not None and now - mtime >= age_s:
                remove(fs, join(root, rel))
                report.temps_removed += 1

