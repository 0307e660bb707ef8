"""Write-ahead staged files (Arrow IPC streams), Parquet segments, and writer heartbeats.

A staged file holds the columns that vary row by row; the columns that are constant for
its writer (run_id, attempt, rank) live in the stream's schema metadata, so a 1M-point
flush does not serialise the run id a million times. `full_table` puts them back.

Heartbeats (`_staging/_live/<run_id>-a<A>-r<R>.json`) say a writer is alive. Recovery
leaves the staged files of a live writer alone: converting them would later double rows,
because that writer's own next segment also contains them. On the writer's own host its
process (pid and start time) decides, not the heartbeat's age (see `writer_is_alive`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from data_schema.layout import STAGING_DIR
from data_schema.tables import schema

CONSTANT_COLUMNS = ("run_id", "attempt", "rank")
LIVE_DIR = f"{STAGING_DIR}/_live"
ROW_GROUP_ROWS = 1_000_000
_META_PREFIX = b"flightlog.const."
_DELTA_COLUMNS = ("step", "wall_time", "first_step", "last_step", "chunk_id")
# A heartbeat (of a writer on another host) older than this many of its flush intervals means dead.
HEARTBEAT_INTERVALS = 3.0


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


# ---- Parquet segments -------------------------------------------------------------------

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


# ---- heartbeats -----------------------------------------------------------------------------

def heartbeat_path(run_id: str, attempt: int, rank: int) -> str:
    return f"{LIVE_DIR}/{run_id}-a{int(attempt)}-r{int(rank)}.json"


def heartbeat_bytes(*, run_id: str, attempt: int, rank: int, pid: int, host: str, flush_interval_s: float) -> bytes:
    return json.dumps({
        "run_id": run_id, "attempt": attempt, "rank": rank, "pid": pid, "host": host,
        "pid_start": process_start(pid) if pid == os.getpid() else None,
        "updated_at": time.time(), "flush_interval_s": flush_interval_s,
    }).encode()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None: with the pid it names one
    process for good, so a reused pid is not taken for the writer that once had it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_is_alive(hb: dict, *, now: float | None = None, intervals: float = HEARTBEAT_INTERVALS) -> bool:
    """Whether the writer of heartbeat `hb` may still write files (so its staged files are not recovery's).

    On this host the process table decides, whatever the heartbeat's age: a writer starved of CPU
    (or stopped) for longer than a few flush intervals is slow, not dead, and converting its
    staged batches while it later segments them too doubles their rows. The heartbeat's age
    decides only for writers on other hosts, whose process table we cannot see.
    """
    if hb["host"] == socket.gethostname() and hb["pid"] > 0:
        if process_is_gone(hb["pid"], hb["host"]):
            return False
        start = hb.get("pid_start")
        if start is None or process_start(hb["pid"]) in (None, start):
            return True
        return False  # the pid now belongs to another process: the writer died
    now = time.time() if now is None else now
    return now - hb["updated_at"] <= intervals * hb["flush_interval_s"]


def process_is_gone(pid: int, host: str) -> bool:
    """True when the heartbeat's writer process surely no longer exists (same host only).

    Lets recovery convert a killed writer's data at once instead of waiting for its heartbeat
    to go stale. A zombie (killed, not yet reaped) counts as gone; other hosts are unknown.
    """
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def parse_heartbeat(raw: bytes) -> dict | None:
    try:
        hb = json.loads(raw)
        return {"run_id": str(hb["run_id"]), "attempt": int(hb["attempt"]), "rank": int(hb["rank"]),
                "updated_at": float(hb["updated_at"]), "flush_interval_s": float(hb.get("flush_interval_s", 2.0)),
                "pid": int(hb.get("pid", -1)), "host": str(hb.get("host", "")),
                "pid_start": None if hb.get("pid_start") is None else int(hb["pid_start"])}
    except (ValueError, KeyError, TypeError):
        return None
