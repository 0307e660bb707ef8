"""Results on stdout or in a file: table (for people), csv, json (one array), jsonl (one object per
line) and, for `flightlog sql`, parquet.

CSV quotes a value only where CSV needs it (a comma, a quote or a line break inside it; an empty string,
so that it differs from NULL, which is an empty field): `flightlog sql ... --format csv | tail -1`
hands the shell the value itself. JSON keeps NaN and ±Inf as NaN/Infinity tokens (data, never null).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.cli.common import SQL_FORMATS, TEXT_FORMATS
from telemetry.store.errors import ArchiveError

__all__ = ["SQL_FORMATS", "TEXT_FORMATS", "csv_text", "json_text", "write_frame", "write_table"]
_PANDAS_DISPLAY = ("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                   "display.max_colwidth", 60)


def write_frame(df: pd.DataFrame, fmt: str) -> None:
    """A pandas DataFrame (from the archive's query helpers) in one of TEXT_FORMATS on stdout."""
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))  # pandas' csv module quoting is already minimal
    elif fmt in ("json", "jsonl"):
        rows = [{k: _frame_value(v) for k, v in row.items()} for row in df.to_dict("records")]
        sys.stdout.write(json_text(rows, fmt))
    else:
        with pd.option_context(*_PANDAS_DISPLAY):
            sys.stdout.write(df.to_string(index=False) + "\n")


def write_table(table: pa.Table, fmt: str, output: str | None) -> None:
    """An Arrow table in one of SQL_FORMATS, to the file `output` or stdout."""
    if fmt == "parquet":
        if not output:
            raise ArchiveError("--format parquet writes binary data: give a file with --output FILE")
        pq.write_table(table, output, compression="zstd")
        return
    if fmt == "csv":
        text = csv_text(table)
    elif fmt in ("json", "jsonl"):
        text = json_text([{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()], fmt)
    else:
        text = _pretty(table)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def json_text(rows: list[dict[str, Any]], fmt: str) -> str:
    """json: one array (an object per line inside it, like DuckDB's -json); jsonl: one object per line."""
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    if fmt == "jsonl":
        return "".join(line + "\n" for line in lines)
    return "[" + ",\n".join(lines) + "]\n"


def csv_text(table: pa.Table) -> str:
    """The table as CSV with a header, values quoted only where CSV needs it, NULL as an empty field."""
    if table.num_columns == 0:
        return "\n"
    header = ",".join(_quote(name) for name in table.column_names)
    if table.num_rows == 0:
        return header + "\n"
    fields = [_csv_column(col) for col in table.columns]
    lines = pc.binary_join_element_wise(*fields, ",", null_handling="replace", null_replacement="")
    return header + "\n" + "\n".join(lines.to_pylist()) + "\n"


def _csv_column(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """One column as CSV fields: text the way Arrow's CSV writer renders it, quoted where needed."""
    kind = col.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_struct(kind) or pa.types.is_map(kind):
        return _quoted(_as_json_text(col))  # nested values have no CSV form: their JSON text
    try:
        text = pc.cast(col, pa.string())  # the cast Arrow's own CSV writer renders values with
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # intervals, bytes that are not UTF-8, ...
        return _quoted(_as_json_text(col))
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind) or pa.types.is_temporal(kind)):
        return text  # a number, time or boolean never holds a comma, a quote or a line break
    return _quoted(text)


def _quoted(text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    needs_quotes = pc.or_(pc.match_substring_regex(text, '[,"\r\n]'), pc.equal(text, ""))
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
    return pc.if_else(needs_quotes, quoted, text)


def _as_json_text(col: pa.ChunkedArray) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                     for v in col.to_pylist()], pa.string())


def _quote(text: str) -> str:
    if text == "" or any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _json_value(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return v


def _frame_value(v: Any) -> Any:
    if v is pd.NaT:
        return None
    return _json_value(v.tolist() if hasattr(v, "tolist") else v)


def _pretty(table: pa.Table) -> str:
    if table.num_columns == 0:
        return "(no columns)\n"
    df = table.to_pandas()
    if df.empty:
        return "  ".join(table.column_names) + "\n(no rows)\n"
    with pd.option_context(*_PANDAS_DISPLAY):
        return df.to_string(index=False) + "\n"
