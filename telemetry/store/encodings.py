"""Parquet encodings of flightlog's data files: the options every segment and compact file is written with."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 1_000_000
# Columns that grow by small steps row to row: DELTA_BINARY_PACKED stores them in a few bits.
_DELTA_COLUMNS = ("step", "wall_time", "first_step", "last_step", "chunk_id")


def parquet_options(sch: pa.Schema) -> dict:
    """zstd; dictionary for names/strings; DELTA_BINARY_PACKED for steps and times;
    BYTE_STREAM_SPLIT for float values (both need dictionary off for those columns)."""
    encodings: dict[str, str] = {}
    for f in sch:
        if f.name in _DELTA_COLUMNS and (pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)):
            encodings[f.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_floating(f.type):
            encodings[f.name] = "BYTE_STREAM_SPLIT"
    dictionary = [f.name for f in sch if f.name not in encodings]
    return {
        "compression": "zstd",
        "use_dictionary": dictionary,
        "column_encoding": encodings,
        "write_statistics": True,
    }


def segment_bytes(data: pa.Table) -> pa.Buffer:
    """The Parquet file of one immutable segment."""
    sink = pa.BufferOutputStream()
    pq.write_table(data, sink, row_group_size=ROW_GROUP_ROWS, **parquet_options(data.schema))
    return sink.getvalue()


def read_segment(raw: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(raw))
