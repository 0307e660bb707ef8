"""What a Parquet file's footer says, read once per file: rows, columns, step range, compaction
spans, format version, and whether its schema fits its table (telemetry.store.run_index reads it; the
per-run index keeps it so a reader need not open the footer again). Nothing here decodes data pages
(telemetry.read.broken_files does that when a query fails).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from data_schema import FORMAT_VERSION
from data_schema.layout import FileKey
from telemetry.store.run_index import file_facts, schema_problems

__all__ = ["LiveFile", "as_version", "from_facts", "one_line", "parquet_error", "read_footer", "schema_problems"]


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


def read_footer(rel: str, key: FileKey, local: str, st: os.stat_result | int | None) -> LiveFile | str:
    """The LiveFile of a table file at `local`, or why readers leave it out (never raises)."""
    try:
        facts = file_facts(rel, pq.read_metadata(local))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
        return f"not a readable Parquet file ({parquet_error(exc)})"
    size = st.st_size if isinstance(st, os.stat_result) else st
    return from_facts(rel, key, local, size, facts)


def from_facts(rel: str, key: FileKey, local: str, size: int | None, facts: dict[str, Any]) -> LiveFile | str:
    """The LiveFile an index entry (telemetry.store.run_index.file_facts) describes, or why readers
    leave the file out: written by a newer flightlog, or not fitting its table."""
    declared = facts.get("version")
    version = None if declared is None else as_version(declared)
    if declared is not None and version is None:
        version = FORMAT_VERSION + 1  # unreadable version: not ours to read
    if version is not None and version > FORMAT_VERSION:
        return (f"written by a newer flightlog (format version {version}, this one reads {FORMAT_VERSION}): "
                "upgrade flightlog to read it")
    misfits = facts.get("misfits") or []
    if misfits:
        return f"does not fit table {key.table!r}: {'; '.join(misfits)}"
    span = facts.get("step_range")
    spans = facts.get("attempt_spans")
    return LiveFile(rel, key, local, size, int(facts["rows"]), tuple(facts.get("columns") or ()),
                    (int(span[0]), int(span[1])) if span else None,
                    tuple((int(a), int(lo), int(hi)) for a, lo, hi in spans) if spans else None)


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
