"""Local copies of a remote archive's files: DuckDB (and the SQL sandbox) only ever read local files.

Segments are immutable, so a cached copy whose size matches the listing is reused. Missing files
are fetched in one batched copy (async stores fetch concurrently) into a private `.incoming`
folder, then renamed into place: a half-copied file is never reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec

from data_schema.layout import join
from telemetry.read.footers import one_line

log = logging.getLogger(__name__)


def default_cache_dir(url: str) -> str:
    """`$XDG_CACHE_HOME/flightlog/<hash of url>` (or under ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flightlog", hashlib.sha256(url.encode()).hexdigest()[:16])


def localize(fs: fsspec.AbstractFileSystem, root: str, url: str, cache_root: str,
             candidates: Sequence[tuple[str, Any, int | None]], skipped: dict[str, str]) -> dict[str, str]:
    """{relative path: local copy} for the (rel, key, size) candidates of the remote archive at `root`;
    a file that cannot be copied is left out and named in `skipped` with why."""
    out: dict[str, str] = {}
    missing: list[tuple[str, str]] = []
    for rel, _, size in candidates:
        local = os.path.join(cache_root, *rel.split("/"))
        if os.path.exists(local) and (size is None or os.path.getsize(local) == size):
            out[rel] = local
        else:
            missing.append((rel, local))
    if not missing:
        return out
    incoming = os.path.join(cache_root, ".incoming", uuid.uuid4().hex)
    os.makedirs(incoming, exist_ok=True)
    tmps = [os.path.join(incoming, rel.replace("/", "__")) for rel, _ in missing]
    try:
        try:  # one batched copy: async stores (s3, gs, http) fetch the files concurrently
            fs.get([join(root, rel) for rel, _ in missing], tmps)
        except Exception as exc:  # noqa: BLE001 - a failed batch may leave partial files: redo one by one
            log.debug("batched copy from %s failed (%s); copying file by file", url, one_line(exc))
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.remove(tmp)
        for (rel, local), tmp in zip(missing, tmps, strict=True):
            if not os.path.exists(tmp):
                try:
                    fs.get_file(join(root, rel), tmp)
                except (OSError, ValueError) as exc:
                    skipped[rel] = ("listed in the manifest but missing from the archive"
                                    if isinstance(exc, FileNotFoundError) or "404" in str(exc)
                                    else f"cannot copy it from {url}: {one_line(exc)}")
                    continue
            os.makedirs(os.path.dirname(local), exist_ok=True)
            os.replace(tmp, local)  # atomic: a half-copied file is never reused
            out[rel] = local
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return out
