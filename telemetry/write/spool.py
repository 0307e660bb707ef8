"""A local disk spool for staged batches an archive store refused (outage, throttling, auth).

A writer of a remote archive (s3://, gs://, ...) that cannot stage a batch writes the very
bytes it would have staged to `<spool root>/<archive key>/<host>-<pid>-<token>/<staged path>`
and frees the memory; when the store answers again the files are uploaded in seq order and
removed once their rows are in a segment. The folder is bounded (`max_bytes`): beyond it the
writer drops batches and counts them (guarantee 1: logging never blocks the training step).

A process killed during an outage leaves its spool folder behind. `upload_orphans` (called by
`recovery.recover`, hence by `flightlog index` and `Archive(url)`) uploads the files of dead
owners into the archive's `_staging/`, where recovery turns them into Parquet. Re-uploading a
file whose rows already reached a segment is harmless: recovery deletes staged files whose seq
a segment of the same (table, run, attempt, rank) covers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid

import fsspec

from data_schema.layout import join, parse_path
from telemetry.store import heartbeat
from telemetry.store.fs import atomic_write_bytes

_OWNER_FILE = "owner.json"


def default_spool_root() -> str:
    """`$FLIGHTLOG_SPOOL`, or `<tmp>/flightlog-spool` (the machine's temp dir survives a process crash)."""
    return os.environ.get("FLIGHTLOG_SPOOL") or os.path.join(tempfile.gettempdir(), "flightlog-spool")


def archive_key(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """A folder name per archive, so orphans are uploaded to the archive they belong to."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return hashlib.sha1(f"{protocol}://{root}".encode()).hexdigest()[:16]


class Spool:
    """One writer's spool folder; created on first use, removed when empty at close."""

    def __init__(self, root: str, key: str, max_bytes: int) -> None:
        self.folder = os.path.join(root, key, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.files_written = 0
        self._sizes: dict[str, int] = {}
        self._created = False

    def __len__(self) -> int:
        return len(self._sizes)

    def put(self, rel: str, data: bytes | memoryview) -> bool:
        """Keep `data` for the archive path `rel`; False when over the bound or the local disk fails."""
        size = len(data)
        if self.bytes_used + size > self.max_bytes:
            return False
        try:
            self._create()
            atomic_write_bytes(fsspec.filesystem("file"), os.path.join(self.folder, rel), data, fsync=False)
        except OSError:
            return False
        self._sizes[rel] = size
        self.bytes_used += size
        self.files_written += 1
        return True

    def get(self, rel: str) -> bytes:
        with open(os.path.join(self.folder, rel), "rb") as f:
            return f.read()

    def discard(self, rel: str) -> None:
        size = self._sizes.pop(rel, None)
        if size is None:
            return
        self.bytes_used -= size
        try:
            os.unlink(os.path.join(self.folder, rel))
        except OSError:
            pass  # an orphan upload later is harmless (see module doc)

    def close(self) -> None:
        """Remove the folder when nothing is left in it; otherwise it waits for `upload_orphans`."""
        if self._created and not self._sizes:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _create(self) -> None:
        if self._created:
            return
        os.makedirs(self.folder, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        with open(os.path.join(self.folder, _OWNER_FILE), "w") as f:
            json.dump(owner, f)
        self._created = True


def upload_orphans(fs: fsspec.AbstractFileSystem, root: str, spool_root: str | None = None) -> int:
    """Upload the spooled files of dead writers of this archive into its `_staging/`; return how many."""
    base = os.path.join(spool_root or default_spool_root(), archive_key(fs, root))
    try:
        folders = sorted(os.listdir(base))
    except OSError:
        return 0
    uploaded = 0
    for name in folders:
        folder = os.path.join(base, name)
        try:
            with open(os.path.join(folder, _OWNER_FILE)) as f:
                owner = json.load(f)
            if not heartbeat.process_is_gone(int(owner["pid"]), str(owner["host"])):
                continue  # alive (or on another host): its writer uploads them itself
        except (OSError, ValueError, KeyError, TypeError):
            continue
        files = []
        for dirpath, _dirs, names in os.walk(folder):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/")
                key = parse_path(rel)
                if key is not None and key.kind == "staged":
                    files.append((key.seq or 0, rel))
        done = True
        for _seq, rel in sorted(files):  # seq order: a later seq never lands before an earlier one
            try:
                with open(os.path.join(folder, rel), "rb") as f:
                    atomic_write_bytes(fs, join(root, rel), f.read())
                os.unlink(os.path.join(folder, rel))
                uploaded += 1
            except Exception:  # noqa: BLE001 - the store may still be away; try again next time
                done = False
                break
        if done:
            shutil.rmtree(folder, ignore_errors=True)
    return uploaded
