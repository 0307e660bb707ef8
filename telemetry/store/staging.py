"""Write-ahead staged files (Arrow IPC streams): what a writer flushes every interval.

A staged file holds the columns that vary row by row; the columns that are constant for
its writer (run_id, attempt, rank) live in the stream's schema metadata, so a 1M-point
flush does not serialise the run id a million times. `full_table` puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from data_schema.tables import schema

CONSTANT_COLUMNS = ("run_id", "attempt", "rank")
_META_PREFIX = b"flightlog.const."


# ---- staged files ---------------------------------------------------------------------

def constant_columns(table: str) -> tuple[str, ...]:
    names = schema(table).names
    return tuple(c for c in CONSTANT_COLUMNS if c in names)


def staged_schema(table: str) -> pa.Schema:
    """The table's schema without the writer-constant columns."""
    sch = schema(table)
    drop = set(constant_columns(table))
    return pa.schema([f for f in sch if f.name not in drop])


def encode_staged(data: pa.Table, *, run_id: str, attempt: int, rank: int) -> pa.Buffer:
    """One Arrow IPC stream holding `data` (staged schema) and the constants in metadata."""
    meta = {_META_PREFIX + b"run_id": run_id.encode(), _META_PREFIX + b"attempt": str(attempt).encode(),
            _META_PREFIX + b"rank": str(rank).encode()}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema.with_metadata(meta)) as w:
        w.write_table(data)
    return sink.getvalue()


@dataclass(slots=True)
class DecodedStaged:
    data: pa.Table | None  # staged columns of every complete batch; None if the header was unreadable
    constants: dict[str, str]
    batches: int
    truncated: bool


def decode_staged(raw: bytes, table: str) -> DecodedStaged:
    """Every complete record batch of a staged stream; a torn tail is skipped, not an error."""
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(raw))
    except (pa.ArrowInvalid, OSError):
        return DecodedStaged(None, {}, 0, True)
    meta = reader.schema.metadata or {}
    consts = {k[len(_META_PREFIX):].decode(): v.decode() for k, v in meta.items() if k.startswith(_META_PREFIX)}
    batches: list[pa.RecordBatch] = []
    truncated = False
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):
            truncated = True
            break
    data = pa.Table.from_batches(batches, schema=reader.schema.remove_metadata())
    return DecodedStaged(data, consts, len(batches), truncated)


def full_table(table: str, data: pa.Table, *, run_id: str, attempt: int, rank: int) -> pa.Table:
    """Staged columns plus the constant columns, in the table's schema order."""
    sch = schema(table)
    n = data.num_rows
    values = {"run_id": run_id, "attempt": attempt, "rank": rank}
    cols = []
    for f in sch:
        if f.name in CONSTANT_COLUMNS and f.name not in data.column_names:
            cols.append(pa.repeat(pa.scalar(values[f.name], f.type), n))
        else:
            col = data.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=sch)
