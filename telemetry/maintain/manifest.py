"""`_manifest/manifest.json`: every live segment with its size, row count and footer facts, for readers
of archives that cannot list (http) and for external engines that read its file list instead of listing
folders. Liveness follows telemetry.store.liveness: replaced parts and compact files without an accepted
record are left out; staged and temp files are never live.

`write_manifest` (`flightlog index`) reads every footer: the authoritative rebuild. A refresh after files
changed (compaction, the live compactor's passes, rows replaced) reuses the old manifest's entries, and
the changed runs' indexes (telemetry.store.run_index), for every file whose listed size still matches, and
reads only the footers of new files; `refresh_runs` lists and reads the changed runs alone, so a pass over
one run of a 1,000-run archive costs that run's listing, not the archive's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec

from data_schema.layout import (
    MANIFEST_FILE,
    SEGMENT_SUFFIX,
    is_temp,
    join,
    parse_path,
    run_dirs,
)
from data_schema.tables import FORMAT_VERSION
from telemetry.store.fs import atomic_write_bytes, list_files, open_fs
from telemetry.store.liveness import live_filter, read_records
from telemetry.store.manifest_file import read_manifest
from telemetry.store.run_index import footer_facts, read_run_index, update_run_index

_TRIES = 3  # re-reads after a write another refresher (another run's compactor) overwrote at once
_NOT_FACTS = ("path", "size", "rows", "table", "run_id", "mtime_ns")


@dataclass(slots=True)
class ManifestRefresh:
    """What one manifest refresh cost and did."""

    footers_read: int = 0
    runs_changed: list[str] = field(default_factory=list)
    written: bool = False
    problems: dict[str, str] = field(default_factory=dict)  # files left out: their footer does not open


def live_segments(fs: fsspec.AbstractFileSystem, root: str, *, exclude: Collection[str] = (),
                  problems: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every Parquet file outside "_" folders: table segments, compacted segments, LOD tables.

    A file whose footer does not open is left out (readers skip it too) and, when `problems`
    is given, named there with the reason; `exclude` leaves out files already found broken.
    """
    out = ManifestRefresh()
    found = list_files(fs, root, "", detail=True)
    entries = _entries(fs, root, found, read_records(fs, root), {}, out, exclude=exclude)
    if problems is not None:
        problems.update(out.problems)
    return entries


def _entries(fs: fsspec.AbstractFileSystem, root: str, found: dict[str, dict], records: list[dict],
             known: dict[str, dict], out: ManifestRefresh, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
    """Manifest entries of the live data files among `found` ({rel: listing info}); `known` entries
    (old manifest, run index) are reused while their size equals the listed one, other footers are read."""
    # parts a compaction replaced (on disk until the grace period ends) and compact files without an
    # accepted record are not live: a reader sent to them would see doubled rows
    _, replaced = live_filter([r for r in found if parse_path(r) is not None], records)
    entries = []
    for rel, info in sorted(found.items()):
        top = rel.split("/", 1)[0]
        if top.startswith("_") or not rel.endswith(SEGMENT_SUFFIX) or is_temp(rel) or "/" not in rel:
            continue
        if rel in exclude or rel in replaced:
            continue
        size = int(info.get("size") or 0)
        old = known.get(rel)
        if old is not None and old.get("size") == size and isinstance(old.get("rows"), int) and (
                "columns" in old or "lod" in old):  # readers of http archives need the footer facts
            facts = {k: v for k, v in old.items() if k not in _NOT_FACTS}
            rows = old["rows"]
        else:
            out.footers_read += 1
            try:
                facts = footer_facts(fs, root, rel)
            except Exception as exc:  # noqa: BLE001 - one broken file must not stop indexing the rest (readers skip it too)
                out.problems[rel] = f"not a readable Parquet file ({' '.join(str(exc).split())})"
                continue
            rows = facts.pop("rows")
        key = parse_path(rel)
        entries.append({"path": rel, "size": size, "rows": rows, "table": key.table if key else top,
                        "run_id": key.run_id if key else None, **facts})
    return entries


def _write(fs: fsspec.AbstractFileSystem, root: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    manifest = {"format_version": FORMAT_VERSION, "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "files": sorted(files, key=lambda e: e["path"])}
    atomic_write_bytes(fs, join(root, MANIFEST_FILE), json.dumps(manifest, indent=1).encode())
    return manifest


def write_manifest(url: str | os.PathLike | None, storage_options: dict | None = None, *,
                   exclude: Collection[str] = (), problems: dict[str, str] | None = None,
                   index_runs: bool = True) -> dict[str, Any]:
    """List the archive's live segments into `_manifest/manifest.json` (atomically), reading every
    footer; return it.

    `exclude`: files known to be broken (from `verify`) that readers must not be sent to;
    `problems` collects files left out because their footer does not open.
    """
    fs, root = open_fs(url, storage_options)
    manifest = _write(fs, root, live_segments(fs, root, exclude=exclude, problems=problems))
    for run_id in sorted({e["run_id"] for e in manifest["files"] if e.get("run_id")} if index_runs else ()):
        update_run_index(fs, root, run_id)  # readers then open every run without opening its footers
    return manifest


def _old_entries(raw: Any) -> list[dict[str, Any]] | None:
    """The entries of a manifest in the form `_write` writes; None for any other form (rebuilt whole)."""
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in files):
        return None
    return files


def refresh_manifest(url: str | os.PathLike | None, fs: fsspec.AbstractFileSystem, root: str,
                     storage_options: dict | None = None, *, runs: Iterable[str] | None = None) -> bool:
    """Rewrite the manifest after the archive's files changed (compaction, rows replaced), when the
    archive has one: readers of stores that cannot list learn the files from it. False when it has none.
    `runs`: only these runs' files changed (only they are listed); None: the whole archive is listed.
    Either way only footers of files the old manifest does not describe are read."""
    if runs is not None:
        return refresh_runs(fs, root, runs) is not None
    raw = read_manifest(fs, root)
    if raw is None:
        return False
    old = _old_entries(raw) or []
    out = ManifestRefresh()
    files = _entries(fs, root, list_files(fs, root, "", detail=True), read_records(fs, root),
                     {e["path"]: e for e in old}, out)
    if files != old:
        _write(fs, root, files)
    return True


def _run_of(rel: str, folders: dict[str, str]) -> str | None:
    parts = rel.split("/", 2)
    return folders.get("/".join(parts[:2])) if len(parts) == 3 else None


def refresh_runs(fs: fsspec.AbstractFileSystem, root: str, run_ids: Iterable[str]) -> ManifestRefresh | None:
    """Rewrite the entries of `run_ids` in the archive's manifest, leaving every other entry as it is;
    None when the archive has no manifest (it gets none). Lists only these runs' folders and reads
    their compaction records and indexes; reads the footers of their new files only. Writes only when
    their entries changed.

    Two refreshers of different runs (each run's compactor) may race: the one that wrote second may
    put back the other's old entries. So a refresh reads the manifest back after writing and merges
    again when its own entries are gone (up to `_TRIES` times); the live compactor compares every pass,
    so a run's entries lost to a race are rewritten on its next pass.
    """
    out = ManifestRefresh()
    raw = read_manifest(fs, root)
    if raw is None:
        return None
    run_ids = sorted(set(run_ids))
    old = _old_entries(raw)
    if old is None:  # a hand-written or older form: rebuilt in the form this code writes
        found = list_files(fs, root, "", detail=True)
        _write(fs, root, _entries(fs, root, found, read_records(fs, root), {}, out))
        out.written, out.runs_changed = True, run_ids
        return out
    folders = {f: run_id for run_id in run_ids for f in run_dirs(run_id)}
    by_path = {e["path"]: e for e in old}
    ours: dict[str, list[dict[str, Any]]] = {}
    for run_id in run_ids:
        found: dict[str, dict] = {}
        for folder in run_dirs(run_id):
            found.update(list_files(fs, root, folder, detail=True))
        # the run index over the old manifest: the compactor updates it after its swaps
        known = {rel: e for rel, e in by_path.items() if _run_of(rel, folders) == run_id}
        known |= read_run_index(fs, root, run_id)
        ours[run_id] = _entries(fs, root, found, read_records(fs, root, run_id=run_id), known, out)
    for _ in range(_TRIES):
        current = {run_id: [] for run_id in run_ids}
        others = []
        for e in old:
            run_id = _run_of(e["path"], folders)
            (current[run_id] if run_id is not None else others).append(e)
        changed = [r for r in run_ids if sorted(current[r], key=lambda e: e["path"]) != ours[r]]
        if not changed:
            return out
        out.runs_changed = sorted(set(out.runs_changed) | set(changed))
        _write(fs, root, others + [e for r in run_ids for e in ours[r]])
        out.written = True
        raw = read_manifest(fs, root)
        old = _old_entries(raw) if raw is not None else None
        if old is None:  # removed or replaced by another form meanwhile: its writer knows best
            return out
    return out


def refresh_runs_reported(fs: fsspec.AbstractFileSystem, root: str, run_ids: Iterable[str], problems: list[str]
                          ) -> int:
    """`refresh_runs` for a compactor: never raises (a manifest failure must not stop compaction); what
    went wrong is added to `problems`. Returns the footers it read."""
    try:
        done = refresh_runs(fs, root, run_ids)  # None: the archive has no manifest, and gets none
    except Exception as exc:  # noqa: BLE001 - the data is compacted; only the manifest is stale (reported)
        problems.append(f"manifest not rewritten: {exc!r} (run `flightlog index`)")
        return 0
    if done is None:
        return 0
    problems += [f"{rel}: left out of the manifest: {why}" for rel, why in done.problems.items()]
    return done.footers_read


__all__ = ["ManifestRefresh", "live_segments", "refresh_manifest", "refresh_runs", "refresh_runs_reported",
           "write_manifest"]
