"""The per-run index, `_manifest/runs/<run_id>.json`: what each data file's footer says, so a reader
opens an archive without opening every footer.

The index is a cache, never an authority: which files are live is still decided by the listing (or
the manifest where the store cannot list) and the compaction records (telemetry.store.liveness). A
reader trusts an entry only while the file's listed size equals the entry's; a missing, stale or
unreadable index only costs footer reads. So whoever changes a run's files may update it without a
lock: the compactor after each swap, `flightlog index`, a reader that had to read new footers. Two
updates racing leave one of two valid caches.

Entries (`file_facts`): rows, columns, the format version the footer declares, the step range from
row-group statistics, a compact file's attempt spans, why the file does not fit its table; for a
level-of-detail file its `flightlog.lod` metadata.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from data_schema import schema
from data_schema.layout import (
    MANIFEST_DIR,
    join,
    parse_lod_path,
    parse_path,
    run_dirs,
    validate_run_id,
)
from telemetry.store.fs import atomic_write_bytes, is_local, list_files
from telemetry.store.liveness import live_filter, read_records

log = logging.getLogger(__name__)

INDEX_DIR = f"{MANIFEST_DIR}/runs"
# compaction records read by this process, by archive root and path: a record never changes once written
_RECORDS: dict[str, dict[str, dict]] = {}
INDEX_FORMAT = 1
COMPACTION_META = b"flightlog.compaction"
LOD_META = b"flightlog.lod"
VERSION_META = b"flightlog.format_version"


def index_path(run_id: str) -> str:
    return f"{INDEX_DIR}/{validate_run_id(run_id)}.json"


def run_of_index(rel: str) -> str | None:
    """The run id an index path names (None for anything else)."""
    if not rel.startswith(INDEX_DIR + "/") or not rel.endswith(".json") or "/" in rel[len(INDEX_DIR) + 1:]:
        return None
    return rel[len(INDEX_DIR) + 1:-len(".json")] or None


# -- what a footer says --------------------------------------------------------------------------
def file_facts(rel: str, md: pq.FileMetaData) -> dict[str, Any]:
    """The index entry of a data or level-of-detail file from its footer (without its size)."""
    if parse_lod_path(rel) is not None:
        raw = (md.metadata or {}).get(LOD_META)
        return {"rows": md.num_rows, "lod": raw.decode("utf-8", "replace") if raw is not None else None}
    key = parse_path(rel)
    arrow_schema = md.schema.to_arrow_schema()
    columns = list(arrow_schema.names)
    span = step_range(md, tuple(columns))
    facts: dict[str, Any] = {
        "rows": md.num_rows, "columns": columns, "version": declared_version(md),
        "step_range": list(span) if span is not None else None,
        "misfits": list(_known_problems(key.table, arrow_schema)) if key is not None else [],
    }
    if key is not None and key.kind == "compact":
        spans = compact_spans(md)
        facts["attempt_spans"] = [list(s) for s in spans] if spans is not None else None
    return facts


def declared_version(md: pq.FileMetaData) -> int | str | None:
    """The format version a footer declares: an int, the raw text when it is not a whole number, None if absent."""
    raw = (md.metadata or {}).get(VERSION_META)
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    return int(text) if text.strip().isdigit() else text


def step_range(md: pq.FileMetaData, columns: tuple[str, ...]) -> tuple[int, int] | None:
    """(min step, max step) from row-group statistics; None when a group has none (or nulls)."""
    if "step" not in columns or md.num_row_groups == 0:
        return None
    idx = next((i for i in range(md.num_columns) if md.schema.column(i).path == "step"), None)
    if idx is None:
        return None
    lo = hi = None
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(idx).statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return (int(lo), int(hi)) if lo is not None else None


def compact_spans(md: pq.FileMetaData) -> tuple[tuple[int, int, int], ...] | None:
    """A compact file's ((attempt, min step, max step), ...) from its footer; None when it has none."""
    raw = (md.metadata or {}).get(COMPACTION_META)
    if raw is None:
        return None
    try:
        spans = json.loads(raw)["attempt_spans"]
        return tuple(sorted((int(a), int(s[0]), int(s[1])) for a, s in spans.items()))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    for name, test in (("int", pa.types.is_integer), ("float", pa.types.is_floating), ("bool", pa.types.is_boolean),
                       ("time", pa.types.is_timestamp), ("null", pa.types.is_null)):
        if test(t):
            return name
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list<" + _kind(t.value_type) + ">"
    return str(t)


@functools.lru_cache(maxsize=256)
def _known_problems(table: str, actual: pa.Schema) -> tuple[str, ...]:
    """schema_problems, once per distinct schema: a live run's thousands of segments share a handful."""
    return tuple(schema_problems(table, actual))


def schema_problems(table: str, actual: pa.Schema) -> list[str]:
    """Why a file's schema does not fit its table (missing required column, incompatible type)."""
    problems = []
    for f in schema(table):
        if f.name not in actual.names:
            if not f.nullable:
                problems.append(f"required column {f.name!r} is missing")
            continue
        got, want = _kind(actual.field(f.name).type), _kind(f.type)
        ok = got in (want, "null") or (want == "float" and got == "int") or (
            want.startswith("list<") and got.startswith("list<") and got[5:-1] in (want[5:-1], "null", "int"))
        if not ok:
            problems.append(f"column {f.name!r} has type {actual.field(f.name).type}, expected {f.type}")
    return problems


# -- the index file ----------------------------------------------------------------------------
def parse_index(raw: bytes | str) -> dict[str, dict[str, Any]] | None:
    """An index file's bytes -> {relative path: entry}; None when it is not an index this code reads."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != INDEX_FORMAT or not isinstance(obj.get("files"), dict):
        return None
    return {rel: e for rel, e in obj["files"].items() if isinstance(rel, str) and isinstance(e, dict)
            and isinstance(e.get("size"), int) and isinstance(e.get("rows"), int)}


def read_run_index(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's index entries; {} when it has none or it does not parse (readers then read footers)."""
    try:
        raw = fs.cat_file(join(root, index_path(run_id)))
    except (FileNotFoundError, OSError):
        return {}
    return parse_index(raw) or {}


def write_run_index(fs: fsspec.AbstractFileSystem, root: str, run_id: str, files: dict[str, dict[str, Any]]) -> None:
    """Write the run's index atomically (a reader sees the old or the new one, never half)."""
    body = {"format": INDEX_FORMAT, "run_id": run_id, "updated_at": dt.datetime.now(dt.UTC).isoformat(),
            "files": {rel: files[rel] for rel in sorted(files)}}
    atomic_write_bytes(fs, join(root, index_path(run_id)), json.dumps(body, separators=(",", ":")).encode(),
                       fsync=False)  # a cache: a torn write after a crash is just an unreadable index


def run_files(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> dict[str, tuple[int | None, int | None]]:
    """{relative path: (size, mtime_ns on a local disk else None)} of the run's data and level-of-detail
    files as listed now (no staged files)."""
    out: dict[str, tuple[int | None, int | None]] = {}
    local = is_local(fs)
    for folder in run_dirs(run_id):
        for rel, info in list_files(fs, root, folder, detail=True).items():
            key = parse_path(rel)
            if (key is None or key.kind == "staged") and parse_lod_path(rel) is None:
                continue
            size = info.get("size")
            mtime_ns = None
            if local:
                try:
                    mtime_ns = os.stat(join(root, rel)).st_mtime_ns
                except OSError:
                    continue  # gone since the listing (a compaction removed it)
            out[rel] = (int(size) if isinstance(size, (int, float)) else None, mtime_ns)
    return out


def entry_matches(entry: dict[str, Any] | None, size: int | None, mtime_ns: int | None = None) -> bool:
    """Whether an index entry still describes the file listed with this size (and local mtime)."""
    if entry is None or size is None or entry.get("size") != size:
        return False
    return mtime_ns is None or entry.get("mtime_ns") in (None, mtime_ns)


def make_entry(facts: dict[str, Any], size: int, mtime_ns: int | None = None) -> dict[str, Any]:
    entry = {"size": size, **facts}
    if mtime_ns is not None:
        entry["mtime_ns"] = mtime_ns
    return entry


def update_run_index(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> dict[str, dict[str, Any]]:
    """List the run's files, read the footers of those the index does not hold yet (unchanged entries
    are kept, entries of files gone are dropped), write the index when it changed; return its entries.

    The compactor calls this after each swap; `flightlog index` for every run. A file whose footer
    does not open is left out (readers report it). Never raises for a store error: it logs it.
    """
    try:
        listed = run_files(fs, root, run_id)
        # parts a compaction replaced are not live: readers never need their facts, and during the grace
        # period before their deletion they would make the index (and every reader's parse of it) ranks x
        # intervals long
        records = read_records(fs, root, run_id=run_id, cache=_RECORDS.setdefault(root, {}))
        _, replaced = live_filter(list(listed), records)
        listed = {rel: v for rel, v in listed.items() if rel not in replaced}
        old = read_run_index(fs, root, run_id)
        files: dict[str, dict[str, Any]] = {}
        for rel, (size, mtime_ns) in listed.items():
            entry = old.get(rel)
            if entry_matches(entry, size, mtime_ns):
                files[rel] = entry
                continue
            facts = _read_facts(fs, root, rel)
            if facts is not None and size is not None:
                files[rel] = make_entry(facts, size, mtime_ns)
        if files != old:
            write_run_index(fs, root, run_id, files)
        return files
    except OSError as exc:
        log.warning("cannot update the index of run %s: %s", run_id, " ".join(str(exc).split()))
        return {}


def footer_facts(fs: fsspec.AbstractFileSystem, root: str, rel: str) -> dict[str, Any]:
    """The index entry facts of one file from its footer (raises when the footer does not open)."""
    path = join(root, rel)
    if is_local(fs):
        return file_facts(rel, pq.read_metadata(path))
    with fs.open(path, "rb") as fh:  # footer only: a ranged read of the file's tail
        return file_facts(rel, pq.ParquetFile(fh).metadata)


def _read_facts(fs: fsspec.AbstractFileSystem, root: str, rel: str) -> dict[str, Any] | None:
    try:
        return footer_facts(fs, root, rel)
    except Exception as exc:  # noqa: BLE001 - an unreadable footer is left out of the index; readers report it
        log.debug("index: footer of %s does not open: %s", rel, exc)
        return None
