"""flightlog's storage engine: per-rank writer, recovery, DuckDB catalog and query API. No torch."""

from importlib import import_module

from telemetry.errors import (
    ArchiveError,
    ArchiveNotFoundError,
    FormatVersionError,
    QueryError,
    SandboxError,
    UnknownRunError,
)

# Public names resolved on first use, so importing `telemetry` stays cheap (no duckdb
# import for a trainer that only writes).
_LAZY = {
    "Writer": "telemetry.writer",
    "WriterConfig": "telemetry.writer",
    "Archive": "telemetry.archive",
    "recover": "telemetry.recovery",
    "RecoveryReport": "telemetry.recovery",
    "verify": "telemetry.integrity",
    "VerifyReport": "telemetry.integrity",
    "SandboxedQuery": "telemetry.sandbox",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'telemetry' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "Archive", "ArchiveError", "ArchiveNotFoundError", "FormatVersionError", "QueryError",
    "RecoveryReport", "SandboxError", "SandboxedQuery", "UnknownRunError", "VerifyReport",
    "Writer", "WriterConfig", "recover", "verify",
]
