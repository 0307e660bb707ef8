"""What a Parquet file's footer says, read once per file: rows, columns, step range, compaction
spans, format version, and whether its schema fits its table. Nothing here decodes data pages
(telemetry.read.broken_files does that when a query fails).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_schema import FORMAT_VERSION, schema
from data_schema.layout import FileKey


@dataclass(frozen=True, slots=True)
class LiveFile:
    """One complete, readable Parquet file of a table."""

    rel: str  # path relative to the archive root, '/'-joined
    key: FileKey
    local: str  # the local path DuckDB reads (the file itself, or its cached copy)
    size: int | None
    rows: int
    columns: tuple[str, ...]
    step_range: tuple[int, int] | None  # from row-group statistics, when the file has them
    # compact files: ((attempt, min step, max step), ...) from the footer, so journey spans need no scan
    attempt_spans: tuple[tuple[int, int, int], ...] | None = None


def read_footer(rel: str, key: FileKey, local: str, st: os.stat_result) -> LiveFile | str:
    """The LiveFile of a table file at `local`, or why readers leave it out (never raises)."""
    try:
        md = pq.read_metadata(local)
        arrow_schema = md.schema.to_arrow_schema()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
        return f"not a readable Parquet file ({parquet_error(exc)})"
    version = file_format_version(md)
    if version is not None and version > FORMAT_VERSION:
        return (f"written by a newer flightlog (format version {version}, this one reads {FORMAT_VERSION}): "
                "upgrade flightlog to read it")
    misfits = schema_problems(key.table, arrow_schema)
    if misfits:
        return f"does not fit table {key.table!r}: {'; '.join(misfits)}"
    columns = tuple(arrow_schema.names)
    return LiveFile(rel, key, local, st.st_size, md.num_rows, columns, _step_range(md, columns),
                    _compact_spans(md) if key.kind == "compact" else None)


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


def _step_range(md: pq.FileMetaData, columns: tuple[str, ...]) -> tuple[int, int] | None:
    if "step" not in columns or md.num_row_groups == 0:
        return None
    idx = None
    for i in range(md.num_columns):
        if md.schema.column(i).path == "step":
            idx = i
            break
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


def _compact_spans(md: pq.FileMetaData) -> tuple[tuple[int, int, int], ...] | None:
    raw = (md.metadata or {}).get(b"flightlog.compaction")
    if raw is None:
        return None
    try:
        spans = json.loads(raw)["attempt_spans"]
        return tuple(sorted((int(a), int(s[0]), int(s[1])) for a, s in spans.items()))
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def file_format_version(md: pq.FileMetaData) -> int | None:
    """The flightlog format version a Parquet file's schema metadata declares (None: not declared)."""
    raw = (md.metadata or {}).get(b"flightlog.format_version")
    if raw is None:
        return None
    version = as_version(raw.decode("utf-8", "replace"))
    return version if version is not None else FORMAT_VERSION + 1  # unreadable version: not ours to read


def as_version(value: Any) -> int | None:
    """A format version as written in flightlog.json or a footer -> int, None when it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def parquet_error(exc: BaseException) -> str:
    """pyarrow's message for a broken file, in words a user can act on."""
    text = one_line(exc)
    if "size is 0 bytes" in text:
        return "empty file, 0 bytes"
    if "magic bytes not found" in text:
        return "truncated or not Parquet at all: no Parquet footer"
    return text


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())
