"""A remote archive read by what a query touches: footers by ranged reads, files copied on demand into a
local cache bounded in size.

Opening a remote archive reads no data file: footer facts come from the per-run index or the manifest
(telemetry.store.run_index), else from the last bytes of each file, fetched in one batch of ranged
reads (`remote_footers`). A query copies only the files it reads into the cache (`FileCache.ensure`),
so DuckDB and the SQL sandbox still read only local files. Segments are immutable, so a cached copy
whose size matches the listing is reused; a copy lands under a private `.incoming` name first and is
renamed into place, so a half-copied file is never read. Past `max_bytes` (FLIGHTLOG_CACHE_MAX_BYTES,
2 GiB by default) the least recently used copies go, never one the current request needs nor one used
in the last few seconds (a query in flight may be reading it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema.layout import join
from telemetry.read.footers import one_line, parquet_error
from telemetry.store.run_index import file_facts

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 << 30  # fits a laptop; FLIGHTLOG_CACHE_MAX_BYTES or Archive(cache_max_bytes=) change it
CACHE_ENV = "FLIGHTLOG_CACHE_MAX_BYTES"
TAIL_BYTES = 16 << 10  # one ranged read holds the footer of most flightlog files; longer ones take a second
_PRIVATE = (".incoming", "_live_view")  # folders of the cache root that are not cached copies
# A copy used this recently may be read by a query in flight (another thread, or the same query's other
# tables): it stays even past the bound, and goes at a later eviction once it has aged.
IN_USE_S = 10.0
MISSING = "listed in the manifest but missing from the archive"


def default_cache_dir(url: str) -> str:
    """`$XDG_CACHE_HOME/flightlog/<hash of url>` (or under ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flightlog", hashlib.sha256(url.encode()).hexdigest()[:16])


def max_bytes_setting(value: int | None = None) -> int:
    """The cache bound: `value`, else $FLIGHTLOG_CACHE_MAX_BYTES, else 2 GiB."""
    if value is not None:
        return int(value)
    raw = os.environ.get(CACHE_ENV, "").strip()
    try:
        return int(float(raw)) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        log.warning("%s=%r is not a number of bytes: using %d", CACHE_ENV, raw, DEFAULT_MAX_BYTES)
        return DEFAULT_MAX_BYTES


def _why(exc: BaseException, url: str) -> str:
    if isinstance(exc, FileNotFoundError) or "404" in str(exc) or "Not Found" in str(exc):
        return MISSING
    return f"cannot copy it from {url}: {one_line(exc)}"


def remote_footers(fs: fsspec.AbstractFileSystem, root: str, url: str,
                   items: Sequence[tuple[str, int | None]]) -> dict[str, dict[str, Any] | str]:
    """{relative path: footer facts, or why the file is left out} for (rel, size) files of a remote
    archive, from the last bytes of each (one batch of ranged reads; async stores fetch them at once)."""
    out: dict[str, dict[str, Any] | str] = {}
    pending = list(items)
    tail = TAIL_BYTES
    for _ in range(2):  # a second round for footers longer than the first tail
        if not pending:
            break
        paths = [join(root, rel) for rel, _ in pending]
        starts = [max(0, size - tail) if size else 0 for _, size in pending]
        ends = [size if size else None for _, size in pending]
        try:
            blobs: list[Any] = fs.cat_ranges(paths, starts, ends, on_error="return")
        except Exception as exc:  # noqa: BLE001 - a failed batch is retried file by file below
            log.debug("batched footer reads from %s failed (%s)", url, one_line(exc))
            blobs = [exc] * len(paths)
        again: list[tuple[str, int | None]] = []
        for (rel, size), blob in zip(pending, blobs, strict=True):
            if isinstance(blob, BaseException):
                try:
                    blob = fs.cat_file(join(root, rel))  # whole file: the store may not take ranges
                except (OSError, ValueError) as exc:
                    out[rel] = _why(exc, url)
                    continue
            blob = bytes(blob)
            if size is not None and len(blob) > tail:
                blob = blob[-tail:]  # a server that ignores Range sends the whole file
            need = int.from_bytes(blob[-8:-4], "little") + 8 if len(blob) >= 8 and blob[-4:] == b"PAR1" else 0
            if need > len(blob) and size is not None and len(blob) < size:
                again.append((rel, size))
                tail = max(tail, need)
                continue
            try:
                out[rel] = file_facts(rel, pq.read_metadata(pa.BufferReader(blob[-need:] if need else blob)))
            except Exception as exc:  # noqa: BLE001 - any unreadable footer is reported, never fatal
                out[rel] = f"not a readable Parquet file ({parquet_error(exc)})"
        pending = again
    return out


class FileCache:
    """Local copies of a remote archive's files, bounded in total size, least recently used out first."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, cache_root: str,
                 max_bytes: int | None = None):
        self.fs, self.root, self.url, self.cache_root = fs, root, url, cache_root
        self.max_bytes = max_bytes_setting(max_bytes)
        self.fetched_files = 0  # copies made by this process (each a whole file)
        self.fetched_bytes = 0
        self._total: int | None = None  # bytes in the cache, counted once then kept up to date
        self._lock = threading.Lock()

    def path(self, rel: str) -> str:
        return os.path.join(self.cache_root, *rel.split("/"))

    def ensure(self, items: Iterable[tuple[str, int | None]]) -> dict[str, str]:
        """Make sure each (rel, size) file has a local copy; {rel: why} for those that cannot be copied.
        Copies already there are marked used (their mtime is the LRU clock)."""
        items = list(dict.fromkeys(items))
        failed: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        with self._lock:
            for rel, size in items:
                local = self.path(rel)
                try:
                    st = os.stat(local)
                except OSError:
                    missing.append((rel, local))
                    continue
                if size is not None and st.st_size != size:
                    missing.append((rel, local))
                    continue
                try:
                    os.utime(local)
                except OSError:
                    pass  # another reader evicted it just now: the query finds out and heals
        if missing:
            failed = self._fetch(missing)
        self.evict(keep={rel for rel, _ in items})
        return failed

    def _fetch(self, missing: list[tuple[str, str]]) -> dict[str, str]:
        failed: dict[str, str] = {}
        incoming = os.path.join(self.cache_root, ".incoming", uuid.uuid4().hex)
        os.makedirs(incoming, exist_ok=True)
        tmps = [os.path.join(incoming, rel.replace("/", "__")) for rel, _ in missing]
        try:
            try:  # one batched copy: async stores (s3, gs, http) fetch the files concurrently
                self.fs.get([join(self.root, rel) for rel, _ in missing], tmps)
            except Exception as exc:  # noqa: BLE001 - a failed batch may leave partial files: redo one by one
                log.debug("batched copy from %s failed (%s); copying file by file", self.url, one_line(exc))
                for tmp in tmps:
                    if os.path.exists(tmp):
                        os.remove(tmp)
            for (rel, local), tmp in zip(missing, tmps, strict=True):
                if not os.path.exists(tmp):
                    try:
                        self.fs.get_file(join(self.root, rel), tmp)
                    except (OSError, ValueError) as exc:
                        failed[rel] = _why(exc, self.url)
                        continue
                size = os.path.getsize(tmp)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                os.replace(tmp, local)  # atomic: a half-copied file is never read
                with self._lock:
                    self.fetched_files += 1
                    self.fetched_bytes += size
                    if self._total is not None:
                        self._total += size
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return failed

    def _copies(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every cached copy."""
        out = []
        for folder, dirs, files in os.walk(self.cache_root):
            if folder == self.cache_root:
                dirs[:] = [d for d in dirs if d not in _PRIVATE]
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # evicted by another reader meanwhile
                out.append((st.st_mtime, st.st_size, path))
        return out

    def total_bytes(self) -> int:
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in self._copies())
            return self._total

    def evict(self, keep: Iterable[str] = ()) -> int:
        """Remove least recently used copies until the cache fits its bound; never a file in `keep`
        (the request being served) nor one used in the last IN_USE_S seconds. Returns the bytes removed."""
        if self.total_bytes() <= self.max_bytes:
            return 0
        kept = {self.path(rel) for rel in keep}
        recent = time.time() - IN_USE_S
        with self._lock:
            copies = sorted(self._copies())
            total = sum(size for _, size, _ in copies)
            removed = 0
            for mtime, size, path in copies:
                if total <= self.max_bytes:
                    break
                if path in kept or mtime > recent:
                    continue
                try:
                    os.remove(path)
                except OSError:
                    continue  # gone already (another reader evicted it)
                total -= size
                removed += size
            self._total = total
        return removed
