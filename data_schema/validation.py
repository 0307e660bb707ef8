"""Row validation with errors that say which table, row, column and value were wrong."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from data_schema.tables import schema

_INT_RANGES = {
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}


class SchemaError(ValueError):
    """A row that does not fit its table's schema."""


def _check_value(table: str, index: int, field: pa.Field, value: Any) -> Any:
    where = f"{table}: row {index}, column {field.name!r}"
    if value is None:
        if not field.nullable:
            raise SchemaError(f"{where} is required but was missing")
        return None
    t = field.type
    if pa.types.is_string(t):
        if not isinstance(value, str):
            raise SchemaError(f"{where} must be a string, got {type(value).__name__} {value!r:.80}")
        try:
            value.encode("utf-8")  # lone surrogates cannot be stored (Parquet strings are UTF-8)
        except UnicodeEncodeError as exc:
            raise SchemaError(f"{where} is not valid Unicode text ({exc.reason} at {exc.start})") from None
        return value
    if pa.types.is_boolean(t):
        if not isinstance(value, bool):
            raise SchemaError(f"{where} must be true or false, got {value!r:.80}")
        return value
    if pa.types.is_integer(t):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            elif hasattr(value, "__index__") and not isinstance(value, bool) and _is_index(value):
                value = int(value.__index__())
            else:
                raise SchemaError(f"{where} must be an integer, got {type(value).__name__} {value!r:.80}")
        lo, hi = _INT_RANGES.get(t, (-(2**63), 2**63 - 1))
        if not lo <= value <= hi:
            raise SchemaError(f"{where} = {value} is outside the {t} range [{lo}, {hi}]")
        return value
    if pa.types.is_floating(t):
        if isinstance(value, (str, bytes)):  # "1.5" is text, not a number: refused, never guessed
            raise SchemaError(f"{where} must be a number, got {type(value).__name__} {value!r:.80}")
        try:
            value = float(value)  # bools are 0/1; numpy scalars convert
        except (TypeError, ValueError):
            raise SchemaError(f"{where} must be a number, got {type(value).__name__} {value!r:.80}") from None
        except OverflowError:
            raise SchemaError(f"{where} = {value!r:.40} is too large for a float64") from None
        if math.isnan(value) or math.isinf(value):
            return value  # NaN and ±Inf are data
        return value
    if pa.types.is_timestamp(t):
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise SchemaError(f"{where} must be timezone-aware (UTC), got a naive datetime")
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            try:
                return dt.datetime.fromtimestamp(value, tz=dt.UTC)
            except (OverflowError, OSError, ValueError):
                raise SchemaError(f"{where} = {value!r:.40} Unix seconds is outside the years 1-9999") from None
        raise SchemaError(f"{where} must be a datetime or Unix seconds, got {value!r:.80}")
    if pa.types.is_list(t):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise SchemaError(f"{where} must be a list, got {type(value).__name__}")
        item_field = pa.field(field.name, t.value_type, nullable=True)
        return [_check_value(table, index, item_field, v) for v in value]
    return value


def _is_index(value: Any) -> bool:
    """Whether value.__index__() works (numpy ints do; numpy bools refuse it)."""
    try:
        value.__index__()
    except TypeError:
        return False
    return True


def validate_rows(table: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check and normalise rows (dicts) for `table`; raise SchemaError naming the problem.

    Unknown columns are refused (a typo would silently vanish otherwise); missing nullable
    columns become None; ints are range-checked; NaN and ±Inf floats pass unchanged.
    """
    sch = schema(table)
    names = set(sch.names)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(f"{table}: row {i} must be a mapping of column to value, got {type(row).__name__}")
        extra = set(row) - names
        if extra:
            raise SchemaError(
                f"{table}: row {i} has unknown column(s) {sorted(extra)}; known columns: {', '.join(sch.names)}"
            )
        out.append({f.name: _check_value(table, i, f, row.get(f.name)) for f in sch})
    return out


def rows_to_table(table: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Validated rows as an Arrow table of exactly the table's schema."""
    checked = validate_rows(table, rows)
    return pa.Table.from_pylist(checked, schema=schema(table))


def conform(table: str, data: pa.Table, *, strict: bool = True, keep_extra: bool = False) -> pa.Table:
    """`data` with the table's columns in schema order and types; a missing column becomes nulls.

    The one rule for laying Arrow columns out as a table of the archive (rows as dicts go through
    `validate_rows` instead). Two uses differ in what they may assume:
    - strict (default): columns from outside, a file of an older writer or another tool, checked
      before anyone reads them: a required column that is missing or holds nulls raises SchemaError.
    - `strict=False`: rows the archive already holds, or staged columns that get their writer
      constants afterwards (compaction, rows replaced by key): nothing is judged, a missing column
      (required or not) becomes nulls.
    `keep_extra` keeps columns the schema does not name (a newer writer's) after the schema's
    instead of dropping them. A column that cannot be cast raises SchemaError either way.
    """
    sch = schema(table)
    cols, fields = [], list(sch)
    for f in sch:
        if f.name not in data.column_names:
            if strict and not f.nullable:
                raise SchemaError(f"{table}: required column {f.name!r} is missing "
                                  f"(columns present: {data.column_names})")
            cols.append(pa.nulls(data.num_rows, f.type))
            continue
        col = data.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{table}: column {f.name!r} has type {col.type}, expected {f.type}: {exc}") from None
        if strict and not f.nullable and col.null_count:
            raise SchemaError(f"{table}: column {f.name!r} is required but has {col.null_count} missing value(s)")
        cols.append(col)
    if keep_extra:
        for name in data.column_names:
            if name not in sch.names:
                cols.append(data.column(name))
                fields.append(data.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields, metadata=sch.metadata))
