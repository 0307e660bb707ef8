"""Leases with fencing: a writer on another host is not taken for dead by comparing two hosts' clocks,
and when it is taken over it never writes what recovery converted.

Why not heartbeat age: `now - updated_at` compares the reader's clock with the writer's. With clocks
minutes apart a live writer looks dead (or a dead one alive for minutes), and no age rule can tell a
dead writer from one paused by SIGSTOP, a long GC or a VM migration that will come back and segment
the very batches recovery converted. So two separate questions:

1. Expiry (is the lease still renewed?) uses no writer clock at all. The writer bumps a renewal
   counter in its lease file every flush cycle. An observer (`LeaseObserver`) calls the lease
   expired when either
   - the counter has not moved for `HEARTBEAT_INTERVALS` of the writer's flush intervals measured on
     the observer's own monotonic clock between two looks (a first look is "not yet known" and
     counts as alive: a long-lived reader or `compact --follow` decides on a later look), or
   - the store's own clock says so: the lease file's modification time as the store stamped it,
     against a probe file the observer writes and stats (`store_now`), both the store's clock.
     That lets a one-shot `flightlog recover` decide on its first look. (Caveat: a file system
     that stamps mtimes with the writing client's clock, as Lustre can, brings skew back for this
     rule; the first rule alone is skew-free.)
   On the writer's own host the process table decides instead (pid + start time: exact).

2. Safety (a writer taken for dead that comes back) is the fence, not the expiry rule. A lease
   carries the generation its holder holds. Taking a group over first creates the fence
   `<group>.gen-<G+1>.fence` write-if-absent (heartbeat.create_exclusive: os.link locally, a
   conditional put `If-None-Match: *` on S3, which moto supports too), before recovery lists or
   reads anything of the group. A writer checks for the fence above its generation before each
   segment write and again after it (before removing its staged files). Once fenced it stops
   writing to that group: its staged batches belong to recovery (converted now or by a later
   pass), and it continues in a new file slot of the same attempt and rank (rows keep their
   attempt and rank; only file names change, as a forked child's do) and says so in a
   `storage_error` event. No row is counted twice and no staged (flushed) row is lost.

   The one window a blind put leaves: a writer that passed its pre-write check and is paused
   inside the segment write itself, landing it after recovery listed the group. Such a segment
   only holds batches recovery converted (their staged files were still there, since the writer
   deletes them after its post-write check). Recovery records each conversion it makes, before
   making it, as `<group>.<table>.<lo>-<hi>.taken`: no legitimate segment of the group has a seq
   in [lo, hi), so any that appears there later is such a zombie, and `remove_zombies` (every
   recovery pass; compaction treats the group as busy meanwhile) deletes it. Until then a reader
   may see it: the window is one writer paused mid-put, for at most one recovery pass.

Fence and `.taken` files are tiny and stay (a paused writer may come back after days).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable

import fsspec

from data_schema.layout import join, parse_path, partition_dir
from telemetry.store import heartbeat
from telemetry.store.fs import atomic_write_bytes, list_files, modified_at, remove


class LeaseObserver:
    """Remembers, per lease, when this process first saw its current renewal counter (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, intervals: float = heartbeat.HEARTBEAT_INTERVALS,
                 store_clock: bool = True) -> None:
        self.clock = clock
        self.intervals = intervals
        self.store_clock = store_clock  # also judge by the store's own modification times
        self._seen: dict[tuple[str, str], tuple[tuple, float]] = {}

    def judge(self, key: tuple[str, str], hb: dict, store_age: Callable[[], float | None]) -> bool | None:
        """True: renewed since the last look (alive); False: expired; None: not yet known (first look)."""
        now = self.clock()
        mark = (hb["host"], hb["pid"], hb["generation"], hb["renewals"])
        limit = self.intervals * hb["flush_interval_s"]
        seen = self._seen.get(key)
        moved = seen is not None and seen[0] != mark
        if seen is None or moved:
            self._seen[key] = (mark, now)
        elif now - seen[1] >= limit:
            return False  # silent for `limit` on our own clock
        if self.store_clock:  # the counter may have moved long ago: the store knows when it last did
            age = store_age()
            if age is not None and age >= limit:
                return False
        return True if moved else None

    def forget_except(self, root: str, keys: Iterable[tuple[str, str]]) -> None:
        keep = set(keys)
        for k in [k for k in self._seen if k[0] == root and k not in keep]:
            del self._seen[k]


OBSERVER = LeaseObserver()  # this process's looks, shared by every scan (readers, compactor, recovery)


def store_now(fs: fsspec.AbstractFileSystem, root: str) -> float | None:
    """The store's own clock: the modification time it stamps on a probe file (None if it cannot tell)."""
    path = join(root, f"{heartbeat.LIVE_DIR}/clock-{uuid.uuid4().hex}.probe")
    try:
        atomic_write_bytes(fs, path, b"", fsync=False)
        try:
            return modified_at(fs.info(path))
        finally:
            remove(fs, path)
    except Exception:  # noqa: BLE001 - a read-only or failing store: the observer's own clock decides alone
        return None


# ---- generations and fences ----------------------------------------------------------------------

def highest_generation(fs: fsspec.AbstractFileSystem, root: str, run_id: str, attempt: int, rank: int) -> int:
    """The highest generation a fence of the group names (0 when never taken over); probed, not listed."""
    gen = 0
    while fs.exists(join(root, heartbeat.fence_path(run_id, attempt, rank, gen + 1))):
        gen += 1
    return gen


def is_fenced(fs: fsspec.AbstractFileSystem, root: str, run_id: str, attempt: int, rank: int,
              generation: int) -> bool:
    """Whether the group was taken over above `generation` (one existence check)."""
    return fs.exists(join(root, heartbeat.fence_path(run_id, attempt, rank, generation + 1)))


def _fence_body() -> bytes:
    return json.dumps({"host": heartbeat.host_id(), "pid": os.getpid(), "created_at": time.time()}).encode()


def claim_slot(fs: fsspec.AbstractFileSystem, root: str, run_id: str, attempt: int, rank: int) -> bool:
    """Claim an unused file slot of (run, attempt) for a writer moving off a fenced group."""
    return heartbeat.create_exclusive(fs, join(root, heartbeat.fence_path(run_id, attempt, rank, 0)), _fence_body())


def take_over(fs: fsspec.AbstractFileSystem, root: str, lease_paths: Iterable[str]) -> int:
    """Fence the group of every expired lease at its holder's generation + 1; the number of fences made.

    Runs before recovery lists or reads the groups' files. A fence that exists already (another
    recovery, or an earlier pass) is just as good: conversions by several recoveries are idempotent."""
    made = 0
    for path in lease_paths:
        rel = path[len(root.rstrip("/")) + 1:] if path.startswith(root) else path
        parsed = heartbeat.parse_live_name(rel)
        if parsed is None or parsed[0] != "lease":
            continue
        run_id, attempt, rank = parsed[1]
        try:
            hb = heartbeat.parse_heartbeat(fs.cat_file(path))
        except FileNotFoundError:
            hb = None
        gen = hb["generation"] if hb is not None else highest_generation(fs, root, run_id, attempt, rank)
        made += heartbeat.create_exclusive(fs, join(root, heartbeat.fence_path(run_id, attempt, rank, gen + 1)),
                                           _fence_body())
    return made


# ---- conversions and zombie segments -------------------------------------------------------------

def record_conversion(fs: fsspec.AbstractFileSystem, root: str, table: str, run_id: str, attempt: int, rank: int,
                      lo: int, hi: int) -> None:
    """Before recovery writes segment `hi` from staged seqs lo..hi: no other segment may ever sit in [lo, hi)."""
    atomic_write_bytes(fs, join(root, heartbeat.taken_path(run_id, attempt, rank, table, lo, hi)), b"", fsync=False)


def taken_ranges(fs: fsspec.AbstractFileSystem, root: str, run_id: str | None = None
                 ) -> dict[tuple[str, str], list[tuple[int, int, int, int]]]:
    """(table, run_id) -> [(attempt, rank, lo, hi)] of every recorded conversion (of one run)."""
    out: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {}
    for rel in list_files(fs, root, heartbeat.LIVE_DIR):
        parsed = heartbeat.parse_live_name(rel)
        if parsed is None or parsed[0] != "taken" or (run_id is not None and parsed[1][0] != run_id):
            continue
        (rid, attempt, rank), d = parsed[1], parsed[2]
        out.setdefault((d["table"], rid), []).append((attempt, rank, d["lo"], d["hi"]))
    return out


def zombie_segments(rels: Iterable[str], ranges: list[tuple[int, int, int, int]]) -> set[str]:
    """Segments among `rels` (one table and run) that sit inside a recorded conversion's [lo, hi)."""
    out = set()
    for rel in rels:
        key = parse_path(rel)
        if key is None or key.kind != "segment" or key.seq is None:
            continue
        if any(key.attempt == a and key.rank == r and lo <= key.seq < hi for a, r, lo, hi in ranges):
            out.add(rel)
    return out


def remove_zombies(fs: fsspec.AbstractFileSystem, root: str) -> int:
    """Delete the segments a fenced writer landed after its group was converted; how many."""
    removed = 0
    for (table, run_id), ranges in sorted(taken_ranges(fs, root).items()):
        for rel in sorted(zombie_segments(list_files(fs, root, partition_dir(table, run_id)), ranges)):
            remove(fs, join(root, rel))
            removed += 1
    return removed
