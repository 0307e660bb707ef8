"""Import CSV and JSON-lines logs (e.g. Pythia's loss CSVs): one row per step, one column per metric.

Empty cells (and JSON null or missing keys) are no point; "nan", "inf", "-inf" (and JSON's
NaN/Infinity tokens) are points with that value. Metrics are the columns named with
--metrics, or every numeric column other than the step and wall-time columns.
Nested JSON objects become names joined with "/".
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from data_schema.layout import run_id_from_name
from data_schema.tables import TS
from telemetry.importers._common import (
    ImportedRun,
    ImportSourceError,
    ImportSummary,
    flatten,
    metrics_table,
    progress,
    seconds_to_ts,
    source_id,
    write_run,
)

# pyarrow's default null markers include "nan": keep NaN as data, only these mean "no value"
_NULLS = ["", "NULL", "null", "None", "NA", "N/A", "#N/A"]
_STEP_GUESSES = ("step", "_step", "iteration", "iter", "global_step", "Step")
_TIME_GUESSES = ("wall_time", "_timestamp", "timestamp", "time", "Wall time")


@dataclass(kw_only=True, slots=True)
class ColumnMap:
    """Which columns of a table log hold what."""

    step_col: str | None = None
    """Column with the step; default: the first of step/_step/iteration/iter/global_step; else the row number."""
    wall_time_col: str | None = None
    """Column with wall time (Unix seconds or ISO timestamps); default: wall_time/_timestamp/timestamp/time."""
    metrics: list[str] | None = None
    """Metric columns; default: every numeric column that is neither the step nor the wall time."""


def _read_csv(path: str) -> pa.Table:
    try:
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(null_values=_NULLS,
                                                                       strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportSourceError(f"{path} is not a readable CSV file: {' '.join(str(exc).split())}") from None


def _read_jsonl(path: str) -> pa.Table:
    """JSON lines via Python's json (it reads NaN/Infinity, which strict JSON parsers refuse)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"cannot read {path}: {exc}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    try:
        rows = json.loads("[" + ",".join(lines) + "]")
    except ValueError:
        rows = []
        for i, ln in enumerate(lines, start=1):
            try:
                rows.append(json.loads(ln))
            except ValueError as exc:
                raise ImportSourceError(f"{path} line {i} is not valid JSON: {exc}") from None
    if any(not isinstance(r, dict) for r in rows):
        raise ImportSourceError(f"{path} is not a JSON-lines log: every line must be a JSON object")
    columns: dict[str, list] = {}
    for i, row in enumerate(rows):
        for key, value in flatten(row):
            col = columns.get(key)
            if col is None:
                col = columns[key] = [None] * i
            col.append(value)
        for col in columns.values():
            if len(col) < i + 1:
                col.append(None)
    arrays = {}
    for key, values in columns.items():
        numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        arrays[key] = pa.array(values, pa.float64()) if numeric else pa.array([_text(v) for v in values])
    return pa.table(arrays)


def _text(v) -> str | None:
    return None if v is None else v if isinstance(v, str) else json.dumps(v)


def _pick(table: pa.Table, given: str | None, guesses: tuple[str, ...], what: str, path: str) -> str | None:
    if given is not None:
        if given not in table.column_names:
            raise ImportSourceError(f"{path} has no column {given!r} for the {what}; its columns are: "
                                    f"{', '.join(table.column_names)}")
        return given
    return next((g for g in guesses if g in table.column_names), None)


def _wall_times(col: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    if pa.types.is_timestamp(col.type):
        return col.combine_chunks().cast(pa.timestamp("us", tz=col.type.tz or "UTC")).cast(TS)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        secs = col.to_numpy().astype(np.float64)
        if np.nanmax(np.abs(secs), initial=0) > 1e11:  # milliseconds (MLflow-style) rather than seconds
            secs = secs / 1000.0
        return seconds_to_ts(secs)
    try:
        return pc.strptime(col.combine_chunks(), "%Y-%m-%dT%H:%M:%S", "us").cast(TS)
    except pa.ArrowInvalid:
        raise ImportSourceError(f"{path}: column {name!r} is neither Unix seconds nor an ISO timestamp") from None


def read_table_log(path: str, kind: str, cols: ColumnMap, run_name: str | None) -> ImportedRun:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImportSourceError(f"{path} is not a file: pass a {kind.upper()} log file")
    table = _read_csv(str(p)) if kind == "csv" else _read_jsonl(str(p))
    if table.num_rows == 0:
        raise ImportSourceError(f"{path} holds no rows")
    step_col = _pick(table, cols.step_col, _STEP_GUESSES, "step", path)
    time_col = _pick(table, cols.wall_time_col, _TIME_GUESSES, "wall time", path)
    if cols.metrics:
        missing = [m for m in cols.metrics if m not in table.column_names]
        if missing:
            raise ImportSourceError(f"{path} has no column(s) {', '.join(missing)}; its columns are: "
                                    f"{', '.join(table.column_names)}")
        names = list(cols.metrics)
    else:
        names = [c for c in table.column_names if c not in (step_col, time_col)
                 and (pa.types.is_integer(table[c].type) or pa.types.is_floating(table[c].type))]
    if not names:
        raise ImportSourceError(f"{path} has no numeric metric columns: name them with --metrics a,b")
    n = table.num_rows
    if step_col is None:
        steps = pa.array(np.arange(n, dtype=np.int64))
    else:
        try:
            steps = table[step_col].combine_chunks().cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ImportSourceError(f"{path}: step column {step_col!r} does not hold whole numbers") from None
        if steps.null_count:
            raise ImportSourceError(f"{path}: step column {step_col!r} has empty cells")
    wall = _wall_times(table[time_col], path, time_col) if time_col else pa.nulls(n, TS)
    parts = []
    skipped = 0
    for name in names:
        try:
            values = table[name].combine_chunks().cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ImportSourceError(f"{path}: column {name!r} is not numeric") from None
        keep = pc.is_valid(values)  # empty cells are no point; NaN is a point
        skipped += values.null_count
        part = metrics_table(steps.filter(keep), pa.repeat(pa.scalar(name), n).filter(keep), values.filter(keep),
                             wall.filter(keep))
        parts.append(part)
    metrics = pa.concat_tables(parts)
    label = run_name or p.stem
    ident = source_id(kind, p.stem) if run_name is None else run_id_from_name(run_name)
    return ImportedRun(run_id=ident, name=label, source=kind, source_path=str(p.resolve()), metrics=metrics,
                       config={"columns": {"step": step_col, "wall_time": time_col, "metrics": names}},
                       skipped={"empty cells": skipped})


def _import(kind: str, path: str, archive_url: str | None, cols: ColumnMap | None, run_name: str | None,
            quiet: bool, storage_options: dict | None) -> ImportSummary:
    summary = ImportSummary(kind)
    t0 = time.perf_counter()
    size = os.path.getsize(path) if os.path.isfile(path) else None
    with progress(size, f"import {kind}", quiet=quiet) as bar:
        run = read_table_log(path, kind, cols or ColumnMap(), run_name)
        summary.add(run, write_run(archive_url, run, storage_options=storage_options))
        summary.source_bytes = size or 0
        bar.update(size or 0)
    summary.seconds = time.perf_counter() - t0
    return summary


def import_csv(path: str, archive_url: str | None, *, columns: ColumnMap | None = None, run_name: str | None = None,
               quiet: bool = False, storage_options: dict | None = None) -> ImportSummary:
    return _import("csv", path, archive_url, columns, run_name, quiet, storage_options)


def import_jsonl(path: str, archive_url: str | None, *, columns: ColumnMap | None = None,
                 run_name: str | None = None, quiet: bool = False, storage_options: dict | None = None
                 ) -> ImportSummary:
    return _import("jsonl", path, archive_url, columns, run_name, quiet, storage_options)
