"""One designated compactor per run: a small lease file, `_manifest/compactors/<run_id>.json`.

Two compactors of one run would not corrupt it (a swap re-checks its inputs just before its record
is written, and records are accepted in order: telemetry.maintain.compaction), but they would
waste work and race for the same parts. So a compactor (rank 0's background thread, or a
`flightlog compact --follow` sidecar) claims the run first and leaves it alone while another
holder's lease is fresh. A lease is stale when its holder's process is gone (same host: the
process table says so at once, so a SIGKILLed compactor is replaced on its next pass) or when it
was not renewed for `ttl_s` (another host). The claim is "write, then read back": the last writer
wins, and a loser backs off on its next read; the swap's own checks cover the rest.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import fsspec

from data_schema.layout import MANIFEST_DIR, join, validate_run_id
from telemetry.store.fs import atomic_write_bytes, remove

LEASE_DIR = f"{MANIFEST_DIR}/compactors"


def lease_path(run_id: str) -> str:
    return f"{LEASE_DIR}/{validate_run_id(run_id)}.json"


def new_owner() -> str:
    """A compactor's identity for its leases (one per compactor, not per run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, under another user
        return False
    return False


def _stale(lease: dict, now: float, ttl_s: float) -> bool:
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int) and lease["pid"] > 0:
        if _pid_gone(lease["pid"]):
            return True
    return now - float(lease.get("renewed_at", 0.0)) > ttl_s


def read_lease(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> dict | None:
    try:
        lease = json.loads(fs.cat_file(join(root, lease_path(run_id))))
    except (FileNotFoundError, ValueError, OSError):
        return None  # none, torn or unreadable: nobody is known to hold the run
    return lease if isinstance(lease, dict) else None


def claim(fs: fsspec.AbstractFileSystem, root: str, run_id: str, owner: str, ttl_s: float) -> bool:
    """Take or renew the run's lease for `owner`; False while another holder's lease is fresh."""
    now = time.time()
    held = read_lease(fs, root, run_id)
    if held is not None and held.get("owner") != owner and not _stale(held, now, ttl_s):
        return False
    body = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": now}
    atomic_write_bytes(fs, join(root, lease_path(run_id)), json.dumps(body).encode())
    back = read_lease(fs, root, run_id)
    return back is not None and back.get("owner") == owner


def release(fs: fsspec.AbstractFileSystem, root: str, run_id: str, owner: str) -> None:
    """Give the run's lease up, if `owner` still holds it."""
    held = read_lease(fs, root, run_id)
    if held is not None and held.get("owner") == owner:
        remove(fs, join(root, lease_path(run_id)))


__all__ = ["LEASE_DIR", "claim", "lease_path", "new_owner", "read_lease", "release"]
