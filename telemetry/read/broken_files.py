"""Files broken past their footer: a footer that opens says nothing of the pages, and a flipped bit
in one page fails every DuckDB query over its table. A query that fails reading data decodes the
files (`page_problem`) to find the one to leave out, and `heals` runs the query again without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
import pyarrow.parquet as pq

from telemetry.read.footers import one_line
from telemetry.store.errors import QueryError

F = TypeVar("F", bound=Callable[..., Any])


class BrokenFileError(QueryError):
    """A query hit a file broken past its footer; the file is now left out (the query may run again)."""

    def __init__(self, found: dict[str, str]):
        self.found = dict(found)
        names = "; ".join(f"{rel}: {why}" for rel, why in self.found.items())
        super().__init__(f"query failed on a broken file, now left out of the archive's views "
                         f"(`flightlog verify` lists it, `flightlog index --quarantine` moves it aside): {names}")


class FilesGoneError(QueryError):
    """A query named files that were deleted since the snapshot was taken (a compaction's grace period
    ended, a level of detail was rebuilt): the snapshot is refreshed and the query may run again."""

    def __init__(self, gone: list[str]):
        self.gone = list(gone)
        super().__init__(f"files were removed while the query ran (the archive changed): {', '.join(gone[:5])}")


MAX_RETRIES_GONE = 3  # an archive changing faster than a query can run: say so instead of looping


# DuckDB errors that come from the query itself, never from a file's bytes: no file to look for
_QUERY_ERRORS = tuple(getattr(duckdb, n) for n in (
    "ParserException", "BinderException", "CatalogException", "InterruptException", "ConversionException",
    "OutOfMemoryException", "PermissionException", "SyntaxException", "TypeMismatchException") if hasattr(duckdb, n))


def may_be_a_broken_file(exc: BaseException) -> bool:
    """Whether a DuckDB error could come from a file's bytes (worth decoding the files to find it)."""
    return isinstance(exc, duckdb.Error) and not isinstance(exc, _QUERY_ERRORS)


def page_problem(path: str) -> str | None:
    """Decode every page of a Parquet file; what is wrong with it, or None when it reads whole.

    `verify` and a failed query come here to find the broken file.
    """
    try:
        pf = pq.ParquetFile(path)
        rows = 0
        for g in range(pf.metadata.num_row_groups):
            rows += pf.read_row_group(g).num_rows
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the finding itself
        return f"a data page does not decode ({one_line(exc)})"
    if rows != pf.metadata.num_rows:
        return f"its footer says {pf.metadata.num_rows} rows, its pages hold {rows}"
    return None


def heals(method: F) -> F:
    """Run a query method again after a broken file it hit was left out (Archive._set_aside_broken
    raises BrokenFileError once it did): each retry follows a newly found broken file, so the
    retries end. What was left out is added to the archive's `problems`. A query that named files
    deleted since the snapshot (FilesGoneError: the snapshot is refreshed) runs again, a few times."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        gone = 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except FilesGoneError:
                gone += 1
                if gone > MAX_RETRIES_GONE:
                    raise
            except BrokenFileError as exc:
                known = self._problems  # what the reader knows so far: no whole scan for a one-run query
                known.extend(p for p in (f"skipped {rel}: {why}" for rel, why in exc.found.items()) if p not in known)

    return wrapper  # type: ignore[return-value]
