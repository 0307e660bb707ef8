"""The archive's tables as Arrow schemas: the single source of truth of the format.

SQL names and the columns listed in ARCHITECTURE.md are the contract; columns may be
added, never renamed. `runs` and `attempts` are stored as append-only state logs (one row
per change, `updated_at` orders them) and read through views that keep the latest row.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1

TS = pa.timestamp("us", tz="UTC")
_STR = pa.string()
_I32 = pa.int32()
_I64 = pa.int64()
_F64 = pa.float64()


def _schema(table: str, *fields: tuple[str, pa.DataType] | tuple[str, pa.DataType, bool]) -> pa.Schema:
    built = []
    for spec in fields:
        name, dtype = spec[0], spec[1]
        nullable = spec[2] if len(spec) > 2 else True
        built.append(pa.field(name, dtype, nullable=nullable))
    return pa.schema(built, metadata={b"flightlog.table": table.encode(),
                                      b"flightlog.format_version": str(FORMAT_VERSION).encode()})


RUNS = _schema(
    "runs",
    ("run_id", _STR, False),
    ("project", _STR),
    ("name", _STR),
    ("created_at", TS),
    ("status", _STR),
    ("world_size", _I32),
    ("dp_size", _I32),
    ("tp_size", _I32),
    ("pp_size", _I32),
    ("config_json", _STR),
    ("git_sha", _STR),
    ("host", _STR),
    ("framework", _STR),
    ("updated_at", TS),
)

ATTEMPTS = _schema(
    "attempts",
    ("run_id", _STR, False),
    ("attempt", _I32, False),
    ("started_at", TS),
    ("ended_at", TS),
    ("end_status", _STR),
    ("resumed_from_step", _I64),
    ("resumed_from_checkpoint", _STR),
    ("seed", _I64),
    ("reason", _STR),
    ("updated_at", TS),
)

RANKS = _schema(
    "ranks",
    ("run_id", _STR, False),
    ("attempt", _I32, False),
    ("rank", _I32, False),
    ("local_rank", _I32),
    ("host", _STR),
    ("gpu_uuid", _STR),
    ("dp_rank", _I32),
    ("tp_rank", _I32),
    ("pp_rank", _I32),
    ("updated_at", TS),
)

METRICS = _schema(
    "metrics",
    ("run_id", _STR, False),
    ("attempt", _I32, False),
    ("rank", _I32, False),
    ("step", _I64, False),
    ("name", _STR, False),
    ("value", _F64),
    ("wall_time", TS),
)

SYSTEM = _schema(
    "system",
    ("run_id", _STR, False),
    ("attempt", _I32, False),
    ("rank", _I32, False),
    ("host", _STR),
    ("gpu_index", _I32),
    ("gpu_uuid", _STR),
    ("wall_time", TS),
    ("name", _STR, False),
    ("value", _F64),
)

EVENTS = _schema(
    "events",
    ("run_id", _STR, False),
    ("attempt", _I32, False),
    ("rank", _I32, False),
    ("step", _I64),
    ("wall_time", TS),
    ("kind", _STR, False),
    ("severity", _STR),
    ("message", _STR),
    ("data_chunk", _I64),
    ("sample_ids", pa.list_(_I64)),
    ("layer", _STR),
    ("details_json", _STR),
)

CHECKPOINTS = _schema(
    "checkpoints",
    ("run_id", _STR, False),
    ("attempt", _I32, False),
    ("step", _I64),
    ("tokens_seen", _I64),
    ("uri", _STR),
    ("wall_time", TS),
    ("bytes", _I64),
    ("has_optimizer_state", pa.bool_()),
    ("weights_dtypes", pa.list_(_STR)),
    ("optimizer_dtypes", pa.list_(_STR)),
    ("data_chunk", _I64),
    ("sha256", _STR),
    ("problems", pa.list_(_STR)),
    ("rank", _I32),
)

DATA_CHUNKS = _schema(
    "data_chunks",
    ("run_id", _STR, False),
    ("chunk_id", _I64, False),
    ("first_step", _I64),
    ("last_step", _I64),
    ("tokens", _I64),
    ("source_mix_json", _STR),
    ("attempt", _I32),
    ("rank", _I32),
)

EVALS = _schema(
    "evals",
    ("run_id", _STR, False),
    ("step", _I64),
    ("benchmark", _STR, False),
    ("metric", _STR, False),
    ("value", _F64),
    ("stderr", _F64),
    ("n_shot", _I32),
    ("harness", _STR),
    ("source", _STR),
    ("tokens_seen", _I64),
)

MEMORIZATION = _schema(
    "memorization",
    ("run_id", _STR, False),
    ("step", _I64),
    ("data_chunk", _I64),
    ("k", _I32),
    ("l", _I32),
    ("n_sequences", _I64),
    ("token_match", _F64),
    ("full_match", _F64),
)

SCHEMAS: dict[str, pa.Schema] = {
    "runs": RUNS,
    "attempts": ATTEMPTS,
    "ranks": RANKS,
    "metrics": METRICS,
    "system": SYSTEM,
    "events": EVENTS,
    "checkpoints": CHECKPOINTS,
    "data_chunks": DATA_CHUNKS,
    "evals": EVALS,
    "memorization": MEMORIZATION,
}
TABLES: tuple[str, ...] = tuple(SCHEMAS)

# The event kinds flightlog itself emits (the trainer hooks, the writer, the importers). The set is
# open: `Writer.event(kind)` takes any name, so nothing refuses a kind outside it; it documents what
# the app and queries can expect (tests/data_schema/test_event_kinds.py keeps it complete).
EVENT_KINDS = (
    "nan", "inf", "loss_spike", "grad_spike", "checkpoint_saved", "checkpoint_loaded", "restart",
    "data_chunk_start", "data_chunk_skipped", "straggler", "gpu_xid", "gpu_throttle", "oom",
    "dropped_records", "note", "storage_error", "storage_recovered", "hook_error", "skipped_update",
    "skipped_iterations",
)


def schema(table: str) -> pa.Schema:
    """The Arrow schema of `table`; a clear error for an unknown name."""
    try:
        return SCHEMAS[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; the archive's tables are: {', '.join(TABLES)}") from None


def empty_table(table: str) -> pa.Table:
    return schema(table).empty_table()
