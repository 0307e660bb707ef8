"""One listing of an archive for the catalog: {relative path: (size, mtime_ns)} of the files a reader may
need, without the folders no reader looks into (quarantine, heartbeats and leases, compaction records:
telemetry.store.liveness lists those itself).

On a local disk `os.scandir` lists ~10k files in milliseconds where a generic `find` with details took a
third of a second; object stores list with fsspec (sizes come with the listing, no mtime needed: their
files are never rewritten in place).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from data_schema import TABLES
from data_schema.layout import (
    LOD_DIR,
    MANIFEST_DIR,
    STAGING_DIR,
    join,
    run_dirs,
    validate_run_id,
)
from telemetry.store.fs import is_local, list_files, walk_local
from telemetry.store.run_index import INDEX_DIR, index_path

Listing = dict[str, tuple[int | None, int | None]]
_PARTITION = "run_id="


def _wanted_dir(rel: str) -> bool:
    """Folders a reader lists: tables, the LOD tables, staged write-ahead, the per-run indexes."""
    top = rel.split("/", 1)[0]
    if top == MANIFEST_DIR:
        return rel == MANIFEST_DIR or rel == INDEX_DIR or rel.startswith(INDEX_DIR + "/")
    return not top.startswith("_") or top == STAGING_DIR


def list_archive(fs: Any, root: str) -> Listing:
    """Every file a reader may need under `root` (see the module docstring)."""
    if is_local(fs):
        return _list_local(root)
    fs.invalidate_cache(root)  # object stores cache listings; we want the present
    prefix = root.rstrip("/") + "/"
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out: Listing = {}
    for path, info in found.items():
        if info.get("type", "file") != "file" or not path.startswith(prefix):
            continue
        rel = path[len(prefix):]
        folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if folder and not _wanted_dir(folder):
            continue
        out[rel] = (_size(info), None)
    return out


def _list_local(root: str, folder: str = "") -> Listing:
    return {rel: (st.st_size, st.st_mtime_ns) for rel, st in walk_local(root, folder, enter=_wanted_dir)
            if st is not None}


# -- one run's files, and the runs an archive holds ------------------------------------------------
def list_runs(fs: Any, root: str, runs: Iterable[str], *, staged: bool = True) -> Listing:
    """The files of these runs only (and their index files), as `list_archive` would list them: what a
    query about one run reads, whatever the number of runs in the archive. A remote store is asked for
    the folders concurrently (one listing request each)."""
    runs = sorted(set(runs))
    folders = [f for r in runs for f in run_dirs(r, staged=staged)]
    out: Listing = {}
    if is_local(fs):
        for folder in folders:
            out.update(_list_local(root, folder))
        for run in runs:
            rel = index_path(run)
            try:
                st = os.stat(join(root, rel))
            except OSError:
                continue
            out[rel] = (st.st_size, st.st_mtime_ns)
        return out
    with ThreadPoolExecutor(max_workers=min(16, len(folders) + 1)) as pool:
        for found in pool.map(lambda f: list_files(fs, root, f, detail=True), folders):
            out.update({rel: (_size(info), None) for rel, info in found.items()})
        indexes = pool.map(lambda r: _info(fs, join(root, index_path(r))), runs)
        for run, info in zip(runs, indexes, strict=True):
            if info is not None:
                out[index_path(run)] = (_size(info), None)
    return out


def list_run_ids(fs: Any, root: str) -> set[str]:
    """The run ids an archive holds: its tables' partition folders (one listing of each table's top
    folder, not of the runs' files)."""
    tops = list(TABLES) + [LOD_DIR]
    names: set[str] = set()
    if is_local(fs):
        for top in tops:
            try:
                names.update(e.name for e in os.scandir(join(root, top)) if e.is_dir(follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                continue
    else:
        def children(top: str) -> list[str]:
            base = join(root, top)
            fs.invalidate_cache(base)
            try:
                return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
            except (FileNotFoundError, NotADirectoryError):
                return []
        with ThreadPoolExecutor(max_workers=len(tops)) as pool:
            for found in pool.map(children, tops):
                names.update(found)
    ids = {n[len(_PARTITION):] for n in names if n.startswith(_PARTITION)}
    return {r for r in ids if _is_run_id(r)}


def _is_run_id(run_id: str) -> bool:
    try:
        validate_run_id(run_id)
    except ValueError:
        return False
    return True


def _info(fs: Any, path: str) -> dict | None:
    try:
        return fs.info(path)
    except (FileNotFoundError, OSError):
        return None


def _size(info: dict) -> int | None:
    size = info.get("size")
    return int(size) if isinstance(size, (int, float)) else None
