"""Writer leases (`_staging/_live/<run_id>-a<A>-r<R>.json`): the evidence that a writer is alive.

Recovery leaves the staged files of a live writer alone: converting them would later double rows,
because that writer's own next segment also contains them. The lease file names its holder (host
id, pid and process start time), the generation it holds and a renewal counter the writer bumps at
every flush cycle. On the writer's own host its process decides (`writer_is_alive`, exact); a writer
on another host is judged by `telemetry.store.lease.LeaseObserver`, which never compares the
writer's clock with the observer's (the reasoning is in that module's docstring). `updated_at`
stays in the file for people reading it; no rule uses it.

Next to the lease live the fences: `<group>.gen-<G>.fence`, created write-if-absent by whoever takes
generation G of the group over (recovery, or a writer claiming a new file slot at generation 0), and
`<group>.<table>.<lo>-<hi>.taken`, the seq range a takeover converted (see lease.py).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable

import fsspec

from data_schema.layout import STAGING_DIR, temp_name
from telemetry.store.fs import is_local

LIVE_DIR = f"{STAGING_DIR}/_live"
# A lease on another host whose renewal counter has not moved for this many of its writer's flush
# intervals (on the observer's monotonic clock, or by the store's own clock) is expired.
HEARTBEAT_INTERVALS = 3.0
HOST_ID_ENV = "FLIGHTLOG_HOST_ID"  # overrides the host name: simulated hosts in tests, containers sharing one

_GROUP = r"(?P<run_id>.+)-a(?P<attempt>\d+)-r(?P<rank>\d+)"
_LEASE_NAME = re.compile(rf"^{_GROUP}\.json$")
_FENCE_NAME = re.compile(rf"^{_GROUP}\.gen-(?P<gen>\d+)\.fence$")
_TAKEN_NAME = re.compile(rf"^{_GROUP}\.(?P<table>[a-z_]+)\.(?P<lo>\d+)-(?P<hi>\d+)\.taken$")


def host_id() -> str:
    """This machine's id in leases: `$FLIGHTLOG_HOST_ID`, else the host name."""
    return os.environ.get(HOST_ID_ENV) or socket.gethostname()


def group_name(run_id: str, attempt: int, rank: int) -> str:
    return f"{run_id}-a{int(attempt)}-r{int(rank)}"


def heartbeat_path(run_id: str, attempt: int, rank: int) -> str:
    return f"{LIVE_DIR}/{group_name(run_id, attempt, rank)}.json"


def fence_path(run_id: str, attempt: int, rank: int, generation: int) -> str:
    return f"{LIVE_DIR}/{group_name(run_id, attempt, rank)}.gen-{int(generation)}.fence"


def taken_path(run_id: str, attempt: int, rank: int, table: str, lo: int, hi: int) -> str:
    return f"{LIVE_DIR}/{group_name(run_id, attempt, rank)}.{table}.{int(lo)}-{int(hi)}.taken"


def parse_live_name(rel: str) -> tuple[str, tuple[str, int, int], dict] | None:
    """("lease" | "fence" | "taken", (run_id, attempt, rank), details) of a file under LIVE_DIR, else None."""
    if not rel.startswith(LIVE_DIR + "/"):
        return None
    name = rel[len(LIVE_DIR) + 1:]
    for kind, pattern in (("lease", _LEASE_NAME), ("fence", _FENCE_NAME), ("taken", _TAKEN_NAME)):
        m = pattern.match(name)
        if m:
            group = (m["run_id"], int(m["attempt"]), int(m["rank"]))
            details = {k: (v if k == "table" else int(v)) for k, v in m.groupdict().items()
                       if k not in ("run_id", "attempt", "rank")}
            return kind, group, details
    return None


def heartbeat_bytes(*, run_id: str, attempt: int, rank: int, pid: int, host: str, flush_interval_s: float,
                    generation: int = 0, renewals: int = 0, clock: Callable[[], float] = time.time) -> bytes:
    return json.dumps({
        "run_id": run_id, "attempt": attempt, "rank": rank, "pid": pid, "host": host,
        "pid_start": process_start(pid) if pid == os.getpid() else None,
        "generation": int(generation), "renewals": int(renewals),
        "updated_at": clock(), "flush_interval_s": flush_interval_s,
    }).encode()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None: with the pid it names one
    process for good, so a reused pid is not taken for the writer that once had it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_this_host(host: str) -> bool:
    """A lease or spool of this machine: its host id, or its host name (spools record the name)."""
    return host in (host_id(), socket.gethostname())


def writer_is_alive(hb: dict) -> bool | None:
    """Whether the writer of lease `hb` may still write files, when its own host's process table can
    tell (exact); None for a writer on another host (see lease.LeaseObserver).

    On this host the process decides, whatever the lease's age: a writer starved of CPU (or
    stopped) for longer than a few flush intervals is slow, not dead, and converting its staged
    batches while it later segments them too doubles their rows.
    """
    if not (is_this_host(hb["host"]) and hb["pid"] > 0):
        return None
    if _local_pid_is_gone(hb["pid"]):
        return False
    start = hb.get("pid_start")
    if start is None or process_start(hb["pid"]) in (None, start):
        return True
    return False  # the pid now belongs to another process: the writer died


def process_is_gone(pid: int, host: str) -> bool:
    """True when the writer process surely no longer exists (same host only).

    Lets recovery convert a killed writer's data at once instead of waiting for its lease to
    expire. A zombie (killed, not yet reaped) counts as gone; other hosts are unknown.
    """
    if not is_this_host(host) or pid <= 0:
        return False
    return _local_pid_is_gone(pid)


def _local_pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def parse_heartbeat(raw: bytes) -> dict | None:
    try:
        hb = json.loads(raw)
        return {"run_id": str(hb["run_id"]), "attempt": int(hb["attempt"]), "rank": int(hb["rank"]),
                "updated_at": float(hb["updated_at"]), "flush_interval_s": float(hb.get("flush_interval_s", 2.0)),
                "pid": int(hb.get("pid", -1)), "host": str(hb.get("host", "")),
                "pid_start": None if hb.get("pid_start") is None else int(hb["pid_start"]),
                "generation": int(hb.get("generation", 0)), "renewals": int(hb.get("renewals", 0))}
    except (ValueError, KeyError, TypeError):
        return None


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `path` only if it does not exist; True if this call created it.

    Local files: the bytes go to a temp file linked into place (`os.link` fails on an existing
    name, atomically). S3 (s3fs): a conditional put, `If-None-Match: *`. Other stores offer no
    write-if-absent through fsspec: there an existence check then a put, and a read-back that
    must return our bytes — the documented weaker rule (two takers within one round trip may both
    believe they won; each then converts the same staged files into the same segment name).
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_name(path, uuid.uuid4().hex[:12])
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if type(fs).__name__ == "S3FileSystem":
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    try:
        return fs.cat_file(path) == data
    except FileNotFoundError:
        return False
