"""The manifest's format (`_manifest/manifest.json`): how every path reads it.

Readers of archives that cannot list a folder (http) learn the live files from it; `flightlog
index` and compaction write it (telemetry.maintain.manifest). Older or hand-written manifests
come as a list of paths, a list of entries, or `{"files": ...}` / `{"tables": ...}`: every form
parses to {relative path: entry}.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from data_schema.layout import MANIFEST_FILE, join


def read_manifest(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """The manifest of the archive at `root` as parsed JSON, or None when it has none
    (ValueError when it is not JSON)."""
    try:
        return json.loads(fs.cat_file(join(root, MANIFEST_FILE)))
    except FileNotFoundError:
        return None


def parse_manifest(obj: Any) -> dict[str, dict]:
    """Manifest JSON -> {relative path: entry (rows, bytes, ...)}; tolerant of list or dict forms."""
    entries: dict[str, dict] = {}

    def add(item: Any, rel: str | None = None) -> None:
        if isinstance(item, str):
            entries[item.lstrip("/")] = {}
        elif isinstance(item, dict):
            path = rel or item.get("path") or item.get("file") or item.get("name")
            if isinstance(path, str):
                entries[path.lstrip("/")] = dict(item)

    if isinstance(obj, dict):
        files = obj.get("files")
        if isinstance(files, list):
            for item in files:
                add(item)
        elif isinstance(files, dict):
            for rel, item in files.items():
                add(item if isinstance(item, dict) else {}, rel)
        tables = obj.get("tables")
        if isinstance(tables, dict):
            for items in tables.values():
                for item in items if isinstance(items, list) else []:
                    add(item)
    elif isinstance(obj, list):
        for item in obj:
            add(item)
    return entries
