"""Writer heartbeats (`_staging/_live/<run_id>-a<A>-r<R>.json`): the evidence that a writer is alive.

Recovery leaves the staged files of a live writer alone: converting them would later double rows,
because that writer's own next segment also contains them. On the writer's own host its process
(pid and start time) decides, not the heartbeat's age (see `writer_is_alive`).
"""

from __future__ import annotations

import json
import os
import socket
import time

from data_schema.layout import STAGING_DIR

LIVE_DIR = f"{STAGING_DIR}/_live"
# A heartbeat (of a writer on another host) older than this many of its flush intervals means dead.
HEARTBEAT_INTERVALS = 3.0


def heartbeat_path(run_id: str, attempt: int, rank: int) -> str:
    return f"{LIVE_DIR}/{run_id}-a{int(attempt)}-r{int(rank)}.json"


def heartbeat_bytes(*, run_id: str, attempt: int, rank: int, pid: int, host: str, flush_interval_s: float) -> bytes:
    return json.dumps({
        "run_id": run_id, "attempt": attempt, "rank": rank, "pid": pid, "host": host,
        "pid_start": process_start(pid) if pid == os.getpid() else None,
        "updated_at": time.time(), "flush_interval_s": flush_interval_s,
    }).encode()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None: with the pid it names one
    process for good, so a reused pid is not taken for the writer that once had it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_is_alive(hb: dict, *, now: float | None = None, intervals: float = HEARTBEAT_INTERVALS) -> bool:
    """Whether the writer of heartbeat `hb` may still write files (so its staged files are not recovery's).

    On this host the process table decides, whatever the heartbeat's age: a writer starved of CPU
    (or stopped) for longer than a few flush intervals is slow, not dead, and converting its
    staged batches while it later segments them too doubles their rows. The heartbeat's age
    decides only for writers on other hosts, whose process table we cannot see.
    """
    if hb["host"] == socket.gethostname() and hb["pid"] > 0:
        if process_is_gone(hb["pid"], hb["host"]):
            return False
        start = hb.get("pid_start")
        if start is None or process_start(hb["pid"]) in (None, start):
            return True
        return False  # the pid now belongs to another process: the writer died
    now = time.time() if now is None else now
    return now - hb["updated_at"] <= intervals * hb["flush_interval_s"]


def process_is_gone(pid: int, host: str) -> bool:
    """True when the heartbeat's writer process surely no longer exists (same host only).

    Lets recovery convert a killed writer's data at once instead of waiting for its heartbeat
    to go stale. A zombie (killed, not yet reaped) counts as gone; other hosts are unknown.
    """
    if host != socket.gethostname() or pid <= 0:
        return False
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
                "pid_start": None if hb.get("pid_start") is None else int(hb["pid_start"])}
    except (ValueError, KeyError, TypeError):
        return None
