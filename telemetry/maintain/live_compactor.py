"""Compaction while a run is live: its file count stays bounded (about one part per writer plus a
few dozen compact files), not one file per writer and segment interval.

Tiers, merged as they fill (as ClickHouse's MergeTree keeps its parts few):
- tier 0: every pass merges the closed `part-*` segments of all ranks of a table into one compact
  file (more when they exceed CompactionConfig.max_file_rows), once `min_parts` of them wait;
- tier n + 1: when `fanout` compact files of tier n accumulate, they are merged into one.
A compact file with at least half of max_file_rows is full and merged no more. So a run holds
about ranks + fanout x tiers + rows / max_file_rows files, and a pass reads only what is new.

Which parts of a LIVE writer may be merged (a group is one table's (attempt, rank) of the run):
- never the group's newest part: a writer whose segment write failed retries it under the same name
  (the write may have landed), and recovery names segments from part names;
- never a part whose seq is >= the group's lowest staged seq: staged batches of it may still be in
  flight (a writer between "segment written" and "staged removed", or a recovery conversion that
  is taken back because its writer turned out to be alive). The staging folder is listed before the
  parts, so a part written meanwhile is newer than a staged file seen and is left alone;
- never a part younger than `settle_s` (a margin for the stores' listing lag).
A group with no live writer and no staged files is closed: all its parts are merged, and its
highest-seq part becomes an empty watermark (telemetry.maintain.compaction), as at close.

Watermarks were kept, rather than reading seqs from compaction records in recovery, in the writer's
seq discovery and in the live reader: all three find seqs in a listing alone today, and a second
source of seqs read by the write path would be one more rule to keep in step. With live compaction a
watermark exists only for a closed group (a live writer's newest part is never merged), so it costs
one empty file per closed (table, attempt, rank): the "ranks" term above, no more.

Each swap re-checks its inputs just before its record is written, and records are stamped when
written, so a racing compactor loses cleanly; a lease (compactor_lease) keeps one compactor per run.
Replaced files are deleted `grace_s` after their swap (compaction_gc), so readers that listed the
run before a swap keep reading the files they listed. A SIGKILL at any point leaves either no
record (the new file is invisible and removed after the grace period) or a complete swap. A manifest,
where the archive has one, gets the run's live files after each pass (external engines read its list).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema.layout import join, parse_path, partition_dir, staging_dir
from data_schema.tables import TABLES
from telemetry.maintain import compactor_lease
from telemetry.maintain.compaction import CompactionConfig, CompactionReport, compact_fs, merge_and_swap, runs_in
from telemetry.maintain.compaction_gc import age_s, collect_garbage
from telemetry.maintain.lod_build import rebuild_lod
from telemetry.maintain.manifest import refresh_runs_reported
from telemetry.maintain.recovery import crashed_attempts
from telemetry.store.fs import list_files, open_fs, read_small_parquet
from telemetry.store.liveness import live_filter, live_writers, read_records, resolve
from telemetry.store.run_index import update_run_index

_log = logging.getLogger("flightlog.compaction")
_TABLE_ORDER = ("metrics",) + tuple(t for t in TABLES if t != "metrics")
_MAX_TIER = 16


@dataclass(kw_only=True, slots=True)
class LivePolicy:
    """When the live compactor merges."""

    interval_s: float = 30.0
    """Seconds between passes."""
    min_parts: int = 16
    """A table's closed parts are merged once at least this many wait (fewer gain little)."""
    fanout: int = 8
    """Compact files of one tier merged into one of the next when this many accumulate."""
    settle_s: float = 5.0
    """A live writer's part younger than this is left for a later pass."""
    grace_s: float = 600.0
    """Replaced files are deleted this long after their swap (readers of an older listing)."""
    lod_interval_s: float = 300.0
    """The run's level-of-detail table is rebuilt at most this often while it is live."""
    lease_ttl_s: float = 300.0
    """Another host's compactor lease not renewed for this long is taken over."""

    def __post_init__(self) -> None:
        if self.min_parts < 1 or self.fanout < 2:
            raise ValueError(f"LivePolicy: min_parts must be >= 1 and fanout >= 2, got {self.min_parts}, "
                             f"{self.fanout}")
        for name in ("interval_s", "settle_s", "grace_s", "lod_interval_s", "lease_ttl_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LivePolicy.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(slots=True)
class PassReport:
    """What one pass over one or more runs did."""

    runs: int = 0
    parts_merged: int = 0         # part files swapped out (tier 0)
    tier_merges: int = 0          # compact files merged into a higher tier
    files_written: int = 0
    rows: int = 0
    removed: int = 0              # replaced files deleted after their grace period
    skipped_busy: int = 0         # runs another compactor holds
    lag_s: float = 0.0            # age of the oldest part this pass merged (how far compaction trails)
    manifest_footers: int = 0     # footers the manifest refresh read (new files only)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def add(self, other: PassReport) -> None:
        for name in ("runs", "parts_merged", "tier_merges", "files_written", "rows", "removed", "skipped_busy",
                     "manifest_footers"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lag_s = max(self.lag_s, other.lag_s)
        self.problems += other.problems


OnSwap = Callable[[fsspec.AbstractFileSystem, str, str], object]
_DEFAULT = object()


def compact_live_run(fs: fsspec.AbstractFileSystem, root: str, run_id: str, *, policy: LivePolicy | None = None,
                     config: CompactionConfig | None = None, live: set | None = None, rebuild_lod_now: bool = False,
                     on_swap: OnSwap | None | object = _DEFAULT, manifest: bool = True) -> PassReport:
    """One pass over one run: merge closed parts (tier 0), merge full tiers, delete old replaced files.
    `on_swap(fs, root, run_id)` is called after the pass when anything was swapped in or removed;
    by default the run's index is updated (telemetry.store.run_index), None: nothing. An archive's
    manifest (where it has one) drops what a swap replaced before it is deleted, and, with `manifest`
    (follow refreshes once for all its runs instead), gets the run's live files at the end."""
    on_swap = update_run_index if on_swap is _DEFAULT else on_swap
    policy, cfg = policy or LivePolicy(), config or CompactionConfig()
    t0 = time.perf_counter()
    out = PassReport(runs=1)
    live = live_writers(fs, root) if live is None else live
    alive = {(a, r) for (rid, a, r) in live if rid == run_id}
    metrics_changed = False
    for table in _TABLE_ORDER:
        before = out.files_written
        try:
            _merge_parts(fs, root, table, run_id, alive, policy, cfg, out)
            _merge_tiers(fs, root, table, run_id, policy, cfg, out)
        except Exception as exc:  # noqa: BLE001 - one table's failure must not stop the others (reported)
            out.problems.append(f"{table} of run {run_id}: live compaction failed: {exc!r}")
        metrics_changed |= table == "metrics" and out.files_written > before
    if cfg.lod and rebuild_lod_now and metrics_changed:
        try:
            rebuild_lod(fs, root, run_id, widths=cfg.lod_widths)
        except Exception as exc:  # noqa: BLE001 - curves read raw rows without a LOD (reported)
            out.problems.append(f"metrics_lod of run {run_id}: build failed: {exc!r}")
    if out.files_written:  # before a grace of 0 deletes what the swaps replaced: never a gone file listed
        out.manifest_footers += refresh_runs_reported(fs, root, [run_id], out.problems)
    garbage = collect_garbage(fs, root, run_id, policy.grace_s)
    out.removed += garbage.removed
    out.problems += garbage.problems
    if callable(on_swap) and (out.files_written or out.removed):
        try:
            on_swap(fs, root, run_id)
        except Exception as exc:  # noqa: BLE001 - an index is a cache of the listing; reported, not raised
            out.problems.append(f"run {run_id}: index update failed: {exc!r}")
    if manifest:  # new segments, old LOD files deleted
        out.manifest_footers += refresh_runs_reported(fs, root, [run_id], out.problems)
    out.seconds = time.perf_counter() - t0
    return out


def _merge_parts(fs, root: str, table: str, run_id: str, alive: set[tuple[int, int]], policy: LivePolicy,
                 cfg: CompactionConfig, out: PassReport) -> None:
    # staged first: a part written after this listing is newer than any staged file it saw
    min_staged: dict[tuple[int, int], int] = {}
    for k in map(parse_path, list_files(fs, root, staging_dir(table, run_id))):
        if k is not None and k.seq is not None:
            g = (k.attempt, k.rank)
            min_staged[g] = min(min_staged.get(g, k.seq), k.seq)
    files = list_files(fs, root, partition_dir(table, run_id), detail=True)
    if not files:
        return
    res = resolve(read_records(fs, root, run_id=run_id), set(files))
    top: dict[tuple[int, int], int] = {}
    parts = []
    for rel in files:
        k = parse_path(rel)
        if k is not None and k.kind == "segment":
            g = (k.attempt, k.rank)
            top[g] = max(top.get(g, -1), k.seq)
            if rel not in res.replaced:
                parts.append((k, rel))
    chosen = []
    for k, rel in parts:
        g = (k.attempt, k.rank)
        if g in alive or g in min_staged:
            if k.seq >= top[g] or k.seq >= min_staged.get(g, math.inf) or age_s(files[rel]) < policy.settle_s:
                continue
        chosen.append((k, rel))
    if len(chosen) < policy.min_parts:
        return
    batch: list[tuple] = []
    rows = 0
    for k, rel in sorted(chosen, key=lambda p: (p[0].attempt, p[0].rank, p[0].seq)):
        try:
            data = read_small_parquet(fs, root, rel)
        except Exception as exc:  # noqa: BLE001 - a broken part stays where it is (verify reports it)
            out.problems.append(f"{rel}: unreadable, left out of compaction ({exc})")
            continue
        if batch and rows + data.num_rows > cfg.max_file_rows:
            _swap_parts(fs, root, table, run_id, batch, top, alive, min_staged, files, cfg, out)
            batch, rows = [], 0
        batch.append((k, rel, data))
        rows += data.num_rows
    if batch:
        _swap_parts(fs, root, table, run_id, batch, top, alive, min_staged, files, cfg, out)


def _swap_parts(fs, root: str, table: str, run_id: str, batch: list[tuple], top: dict, alive: set,
                min_staged: dict, files: dict, cfg: CompactionConfig, out: PassReport) -> None:
    closed = {g for g in top if g not in alive and g not in min_staged}
    watermarks = [rel for k, rel, _ in batch if (k.attempt, k.rank) in closed and top[(k.attempt, k.rank)] == k.seq]
    seqs: dict[str, int] = {}
    for k, _, _ in batch:
        name = f"a{k.attempt}-r{k.rank}"
        seqs[name] = max(seqs.get(name, -1), k.seq)
    done = merge_and_swap(fs, root, table, run_id, [b[2] for b in batch], replaces=[b[1] for b in batch],
                          watermarks=watermarks, segment_seqs=seqs, cfg=cfg, tier=0)
    if done is None:
        out.problems.append(f"{table} of run {run_id}: another compaction replaced these parts first")
        return
    out.files_written += 1
    out.parts_merged += len(batch)
    out.rows += done[2]
    out.lag_s = max(out.lag_s, max(age_s(files[rel]) for _, rel, _ in batch))


def _merge_tiers(fs, root: str, table: str, run_id: str, policy: LivePolicy, cfg: CompactionConfig,
                 out: PassReport) -> None:
    files = set(list_files(fs, root, partition_dir(table, run_id)))
    if not any((k := parse_path(f)) is not None and k.kind == "compact" for f in files):
        return
    records = read_records(fs, root, run_id=run_id)
    for tier in range(_MAX_TIER):
        res = resolve(records, files)
        full = cfg.max_file_rows // 2
        level = sorted((r for r in res.accepted if r["file"] in res.compacts and int(r.get("tier", 0)) == tier
                        and int(r.get("rows", 0)) < full), key=lambda r: (str(r.get("created_at")), r["uid"]))
        if len(level) < policy.fanout:
            continue
        group: list[dict] = []
        for rec in level:
            if group and sum(int(g.get("rows", 0)) for g in group) + int(rec.get("rows", 0)) > cfg.max_file_rows:
                if len(group) >= 2:  # more than half full together: one full file
                    _swap_compacts(fs, root, table, run_id, group, tier, cfg, out)
                group = []
            group.append(rec)
            if len(group) == policy.fanout:
                _swap_compacts(fs, root, table, run_id, group, tier, cfg, out)
                group = []
        # the next tier sees the files this one wrote
        files = set(list_files(fs, root, partition_dir(table, run_id)))
        records = read_records(fs, root, run_id=run_id)


def _swap_compacts(fs, root: str, table: str, run_id: str, group: list[dict], tier: int, cfg: CompactionConfig,
                   out: PassReport) -> None:
    inputs: list[pa.Table] = []
    seqs: dict[str, int] = {}
    for rec in group:
        with fs.open(join(root, rec["file"]), "rb") as fh:
            data = pq.read_table(fh)
        inputs.append(data.replace_schema_metadata(None))
        for name, seq in (rec.get("segment_seqs") or {}).items():
            seqs[name] = max(seqs.get(name, -1), int(seq))
    done = merge_and_swap(fs, root, table, run_id, inputs, replaces=[r["file"] for r in group], watermarks=[],
                          segment_seqs=seqs, cfg=cfg, tier=min(tier + 1, _MAX_TIER - 1))
    if done is None:
        out.problems.append(f"{table} of run {run_id}: another compaction merged these files first")
        return
    out.files_written += 1
    out.tier_merges += len(group)
    out.rows += done[2]


# ---- running it: in rank 0's writer, or as a sidecar ------------------------------------------------

def _lower_priority() -> None:
    """Nice this thread (Linux threads have their own nice value), so the training loop comes first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: the thread runs at normal priority
        _log.debug("flightlog: live compactor keeps its priority: %r", exc)


def run_in_writer(fs: fsspec.AbstractFileSystem, root: str, run_id: str, stop: threading.Event, *,
                  interval_s: float = 30.0, policy: LivePolicy | None = None, config: CompactionConfig | None = None,
                  on_swap: OnSwap | None | object = _DEFAULT) -> None:
    """The body of rank 0's background compactor thread: a pass over its run every `interval_s` until
    `stop` is set. Never raises: a failed pass is logged and the next one tries again."""
    _lower_priority()
    policy = policy or LivePolicy(interval_s=interval_s)
    owner = compactor_lease.new_owner()
    last_lod = time.monotonic()
    try:
        while not stop.wait(interval_s):
            try:
                if not compactor_lease.claim(fs, root, run_id, owner, policy.lease_ttl_s):
                    continue
                lod_due = time.monotonic() - last_lod >= policy.lod_interval_s
                report = compact_live_run(fs, root, run_id, policy=policy, config=config, rebuild_lod_now=lod_due,
                                          on_swap=on_swap)
                last_lod = time.monotonic() if lod_due else last_lod
                for p in report.problems:
                    _log.warning("flightlog: live compaction of run %r: %s", run_id, p)
            except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; logged, retried next pass
                _log.warning("flightlog: live compaction of run %r failed: %r", run_id, exc)
    finally:
        _release(fs, root, [run_id], owner)


def follow(url: str | os.PathLike | None, stop: threading.Event, *, policy: LivePolicy | None = None,
           config: CompactionConfig | None = None, runs: list[str] | None = None,
           storage_options: dict | None = None, on_pass: Callable[[PassReport], object] | None = None,
           on_swap: OnSwap | None | object = _DEFAULT, max_passes: int | None = None) -> PassReport:
    """The sidecar (`flightlog compact --follow`): passes every `policy.interval_s` until `stop` is set
    (or `max_passes` ran). Each pass covers `runs` if given, else the runs with live writers, the runs
    that had some on an earlier pass (their last parts), and on the first pass every run. Returns the
    totals; `on_pass(report)` is called after each pass."""
    fs, root = open_fs(url, storage_options)
    policy = policy or LivePolicy()
    owner = compactor_lease.new_owner()
    total = PassReport()
    watched: set[str] = set()
    held: set[str] = set()
    passes = 0
    last_lod: dict[str, float] = {}
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            rep = PassReport()
            live = live_writers(fs, root)
            now_live = {rid for rid, _, _ in live}
            todo = sorted(set(runs) if runs is not None else (
                runs_in(fs, root) if passes == 0 else now_live | watched))
            watched = now_live if runs is None else watched
            claimed: list[str] = []
            for run_id in todo:
                if stop.is_set():
                    break
                if not compactor_lease.claim(fs, root, run_id, owner, policy.lease_ttl_s):
                    rep.skipped_busy += 1
                    continue
                held.add(run_id)
                claimed.append(run_id)
                lod_due = run_id not in now_live or \
                    time.monotonic() - last_lod.get(run_id, -math.inf) >= policy.lod_interval_s
                rep.add(compact_live_run(fs, root, run_id, policy=policy, config=config, live=live,
                                         rebuild_lod_now=lod_due, on_swap=on_swap, manifest=False))
                if lod_due:
                    last_lod[run_id] = time.monotonic()
            if claimed:  # one manifest rewrite for every run of the pass
                rep.manifest_footers += refresh_runs_reported(fs, root, claimed, rep.problems)
            rep.seconds = time.perf_counter() - t0
            total.add(rep)
            passes += 1
            if on_pass is not None:
                on_pass(rep)
            if max_passes is not None and passes >= max_passes:
                break
            stop.wait(policy.interval_s)
    finally:
        _release(fs, root, held, owner)
    return total


def _release(fs: fsspec.AbstractFileSystem, root: str, run_ids: Iterable[str], owner: str) -> None:
    for run_id in run_ids:
        try:
            compactor_lease.release(fs, root, run_id, owner)
        except Exception as exc:  # noqa: BLE001 - a lease left behind goes stale with its process (logged)
            _log.debug("flightlog: cannot release the compactor lease of %r: %r", run_id, exc)


def compact_crashed(fs: fsspec.AbstractFileSystem, root: str, *, grace_s: float = 600.0,
                    config: CompactionConfig | None = None) -> CompactionReport:
    """Compact the runs whose crashed attempts (recovery marked them) still have parts no compaction
    replaced: nobody compacts them on close (`flightlog index` calls this after recovery)."""
    report = CompactionReport()
    crashed = crashed_attempts(fs, root)
    for run_id in sorted({r for r, _ in crashed}):
        files = list_files(fs, root, partition_dir("metrics", run_id))
        keep, _ = live_filter(files, read_records(fs, root, run_id=run_id))
        if any((k := parse_path(r)) is not None and k.kind == "segment" and (run_id, k.attempt) in crashed
               for r in keep):
            one = compact_fs(fs, root, run_id, grace_s=grace_s, config=config)
            for name in ("runs", "files_written", "segments_replaced", "rows", "lod_files", "removed"):
                setattr(report, name, getattr(report, name) + getattr(one, name))
            report.problems += one.problems
    return report


__all__ = ["LivePolicy", "PassReport", "compact_crashed", "compact_live_run", "follow", "run_in_writer"]
