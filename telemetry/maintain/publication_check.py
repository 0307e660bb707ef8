"""Checking a publication (`flightlog verify` of an archive `flightlog publish` wrote).

A publication's manifest names every file with its size and sha256 (telemetry.maintain.publish).
Here each file is read once, start to end (a static host need not serve byte ranges), and
compared; and the manifest must be complete: a compact file whose record it does not list would
be ignored by a reader over http, and a data file it does not list would not be served at all.
Archives that were not published have nothing to check here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec

from data_schema.layout import MANIFEST_FILE, ROOT_FILE, join, parse_lod_path, parse_path
from telemetry.store.fs import list_files
from telemetry.store.liveness import record_path_of
from telemetry.store.manifest_file import read_manifest

_CHUNK = 1 << 20


def sha256_of(fh: Any) -> tuple[str, int]:
    """(hex sha256, bytes read) of an open binary file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size

def existing_files(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    """Every file under `root` (relative paths); empty when the destination cannot be listed (yet)."""
    try:
        return set(list_files(fs, root, ""))
    except (OSError, ValueError):
        return set()  # a folder that does not exist yet, or a store that cannot list: nothing to see


def publication_problems(fs: fsspec.AbstractFileSystem, root: str, *, listable: bool) -> list[str]:
    """Problems of a published archive: missing files, wrong sizes or checksums, and an incomplete
    manifest (files a reader needs but a static host would not serve). [] for other archives."""
    try:
        manifest = read_manifest(fs, root)
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST_FILE}: cannot be read ({exc})"]
    if not isinstance(manifest, dict) or "published" not in manifest:
        return []
    problems: list[str] = []
    entries = {e.get("path"): e for e in manifest.get("files", []) if isinstance(e, dict)}
    # a static host need not serve byte ranges: stream each file once, start to end
    open_opts = {} if listable else {"block_size": 0}
    for rel, e in sorted(entries.items(), key=lambda kv: str(kv[0])):
        if not isinstance(rel, str) or not isinstance(e.get("sha256"), str):
            problems.append(f"{MANIFEST_FILE}: entry {rel!r} has no sha256")
            continue
        try:
            with fs.open(join(root, rel), "rb", **open_opts) as fh:
                got, size = sha256_of(fh)
        except FileNotFoundError:
            problems.append(f"{rel}: listed in the manifest but missing from the archive")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{rel}: cannot be read ({exc})")
            continue
        if e.get("size") is not None and int(e["size"]) != size:
            problems.append(f"{rel}: the manifest says {e['size']} bytes, the file has {size}")
        elif got != e["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (the file changed after publishing, or is corrupt)")
    if ROOT_FILE not in entries:
        problems.append(f"{MANIFEST_FILE}: does not list {ROOT_FILE}")
    for rel in entries:
        key = parse_path(rel) if isinstance(rel, str) else None
        if key is not None and key.kind == "compact" and record_path_of(rel) not in entries:
            problems.append(f"{rel}: its compaction record {record_path_of(rel)} is not in the manifest "
                            "(a reader over http would ignore the file)")
    if listable:
        for rel in sorted(existing_files(fs, root)):
            if rel in entries or rel == MANIFEST_FILE:
                continue
            if parse_path(rel) is not None or parse_lod_path(rel) is not None or rel.startswith("_manifest/"):
                problems.append(f"{rel}: in the archive but not in the manifest (a static host would not serve it)")
    return problems


__all__ = ["existing_files", "publication_problems", "sha256_of"]
