"""flightlog's storage engine: per-rank writer, recovery, DuckDB catalog and query API. No torch."""

from importlib import import_module

from telemetry.store.errors import (
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
    "Writer": "telemetry.maintain.wired",
    "WriterConfig": "telemetry.write.config",
    "Archive": "telemetry.maintain.wired",
    "LiveArchive": "telemetry.maintain.wired",
    "open_archive": "telemetry.maintain.wired",
    "compact": "telemetry.maintain.compaction",
    "publish": "telemetry.maintain.publish",
    "recover": "telemetry.maintain.recovery",
    "RecoveryReport": "telemetry.maintain.recovery",
    "verify": "telemetry.maintain.file_integrity",
    "VerifyReport": "telemetry.maintain.file_integrity",
    "SandboxedQuery": "telemetry.read.sandbox",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'telemetry' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "Archive", "ArchiveError", "ArchiveNotFoundError", "FormatVersionError", "LiveArchive", "QueryError",
    "RecoveryReport", "SandboxError", "SandboxedQuery", "UnknownRunError", "VerifyReport",
    "Writer", "WriterConfig", "compact", "open_archive", "publish", "recover", "verify",
]
