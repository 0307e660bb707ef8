"""`_manifest/manifest.json`: every live segment with its size and row count, for readers of
archives that cannot list (http). Staged and temp files are never live."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Collection
from typing import Any

import fsspec
import pyarrow.parquet as pq

from data_schema.layout import MANIFEST_FILE, SEGMENT_SUFFIX, is_temp, join, parse_path
from data_schema.tables import FORMAT_VERSION
from telemetry.store.fs import atomic_write_bytes, list_files, open_fs
from telemetry.store.liveness import live_filter, read_records
from telemetry.store.manifest_file import read_manifest
from telemetry.store.run_index import file_facts, update_run_index


def live_segments(fs: fsspec.AbstractFileSystem, root: str, *, exclude: Collection[str] = (),
                  problems: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every Parquet file outside "_" folders: table segments, compacted segments, LOD tables.

    A file whose footer does not open is left out (readers skip it too) and, when `problems`
    is given, named there with the reason; `exclude` leaves out files already found broken.
    """
    found = list_files(fs, root, "", detail=True)
    # parts a compaction replaced (on disk until the grace period ends) and compact files without an
    # accepted record are not live: a reader sent to them would see doubled rows
    _, replaced = live_filter([r for r in found if parse_path(r) is not None], read_records(fs, root))
    out = []
    for rel, info in sorted(found.items()):
        top = rel.split("/", 1)[0]
        if top.startswith("_") or not rel.endswith(SEGMENT_SUFFIX) or is_temp(rel) or "/" not in rel:
            continue
        if rel in exclude or rel in replaced:
            continue
        key = parse_path(rel)
        try:
            with fs.open(join(root, rel), "rb") as f:
                facts = file_facts(rel, pq.ParquetFile(f).metadata)  # readers of http archives need no footer
            rows = facts.pop("rows")
        except Exception as exc:  # noqa: BLE001 - one broken file must not stop indexing the rest (readers skip it too)
            if problems is not None:
                problems[rel] = f"not a readable Parquet file ({' '.join(str(exc).split())})"
            continue
        out.append({"path": rel, "size": int(info.get("size") or 0), "rows": rows,
                    "table": key.table if key else top, "run_id": key.run_id if key else None, **facts})
    return out


def write_manifest(url: str | os.PathLike | None, storage_options: dict | None = None, *,
                   exclude: Collection[str] = (), problems: dict[str, str] | None = None,
                   index_runs: bool = True) -> dict[str, Any]:
    """List the archive's live segments into `_manifest/manifest.json` (atomically); return it.

    `exclude`: files known to be broken (from `verify`) that readers must not be sent to;
    `problems` collects files left out because their footer does not open.
    """
    fs, root = open_fs(url, storage_options)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "files": live_segments(fs, root, exclude=exclude, problems=problems),
    }
    atomic_write_bytes(fs, join(root, MANIFEST_FILE), json.dumps(manifest, indent=1).encode())
    for run_id in sorted({e["run_id"] for e in manifest["files"] if e.get("run_id")} if index_runs else ()):
        update_run_index(fs, root, run_id)  # readers then open every run without opening its footers
    return manifest


def refresh_manifest(url: str | os.PathLike | None, fs: fsspec.AbstractFileSystem, root: str,
                     storage_options: dict | None = None) -> bool:
    """Rewrite the manifest after the archive's files changed (compaction, rows replaced), when the
    archive has one: readers of stores that cannot list learn the files from it. False when it has none."""
    if read_manifest(fs, root) is None:
        return False
    write_manifest(url, storage_options, index_runs=False)  # the compactor indexes the run it changed
    return True
