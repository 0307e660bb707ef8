"""flightlog's archive format: table schemas, storage layout and row validation (pyarrow only)."""

from data_schema.layout import (
    FileKey,
    LayoutError,
    parse_path,
    run_id_from_name,
    segment_path,
    staged_path,
    validate_run_id,
)
from data_schema.tables import FORMAT_VERSION, SCHEMAS, TABLES, empty_table, schema
from data_schema.validation import SchemaError, conform, rows_to_table, validate_rows

__all__ = [
    "FORMAT_VERSION", "SCHEMAS", "TABLES", "FileKey", "LayoutError", "SchemaError", "conform",
    "empty_table", "parse_path", "rows_to_table", "run_id_from_name", "schema", "segment_path",
    "staged_path", "validate_rows", "validate_run_id",
]
