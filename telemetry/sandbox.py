"""SQL for untrusted users: read-only, inside the archive, with a row cap and a time limit.

Its own DuckDB connection holds the archive's views; then the configuration is locked so a
query cannot read, write or attach anything outside the archive's local folder, install or
load extensions, read the caller's Python variables, or change a setting back. Statements
other than queries are refused before they run, and a timer interrupts a query that runs
past its limit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from telemetry.archive import Archive, create_views, new_connection
from telemetry.curves import quote_str
from telemetry.errors import QueryError, SandboxError

# Statement types a reader may run (DESCRIBE, SHOW, SUMMARIZE, WITH, VALUES parse as SELECT).
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_BATCH_ROWS = 65_536


@dataclass(slots=True)
class SandboxResult:
    table: pa.Table
    truncated: bool  # more rows existed than row_limit; `table` holds the first row_limit
    elapsed_s: float


class SandboxedQuery:
    """Run untrusted SQL over an archive: `SandboxedQuery(archive).run("SELECT ...")`."""

    def __init__(
        self,
        archive: Archive,
        row_limit: int | None = 10_000,
        timeout_s: float | None = 10.0,
        *,
        memory_limit: str | None = None,
    ):
        if row_limit is not None and row_limit < 1:
            raise ValueError("row_limit must be a positive number of rows, or None for no cap")
        self.archive = archive
        self.row_limit = row_limit
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._con = new_connection()
        create_views(self._con, archive.snapshot)
        self._version = archive.version
        root = archive.local_root.rstrip("/") + "/"
        settings = [
            f"SET allowed_directories = [{quote_str(root)}]",
            "SET enable_external_access = false",
            "SET python_enable_replacements = false",
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            "SET allow_community_extensions = false",
        ]
        if memory_limit:
            settings.append(f"SET memory_limit = {quote_str(memory_limit)}")
        settings.append("SET lock_configuration = true")  # last: nothing above can be undone
        for stmt in settings:
            self._con.execute(stmt)

    def close(self) -> None:
        self._con.close()

    def _sync_views(self) -> None:
        """Follow the archive's refreshes (new segments) with this connection's views."""
        if self.archive.version != self._version:
            with self._lock:
                if self.archive.version != self._version:
                    create_views(self._con, self.archive.snapshot)
                    self._version = self.archive.version

    def check(self, sql: str) -> None:
        """Refuse anything that is not exactly one read-only query (SandboxError/QueryError)."""
        if not sql or not sql.strip():
            raise QueryError("empty query: write a SELECT, e.g. SELECT * FROM runs")
        cur = self._con.cursor()
        try:
            statements = cur.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {exc}") from None
        finally:
            cur.close()
        if len(statements) != 1:
            raise SandboxError(f"one statement at a time, please (got {len(statements)})")
        kind = statements[0].type
        if kind not in _READ_ONLY:
            name = getattr(kind, "name", str(kind))
            raise SandboxError(
                f"only read-only queries are allowed (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); "
                f"{name} statements are not"
            )

    def run(self, sql: str) -> pa.Table:
        """The query's rows (at most row_limit); schema metadata flightlog.truncated says if cut."""
        result = self.run_result(sql)
        meta = dict(result.table.schema.metadata or {})
        meta[b"flightlog.truncated"] = b"true" if result.truncated else b"false"
        return result.table.replace_schema_metadata(meta)

    def run_result(self, sql: str) -> SandboxResult:
        self.check(sql)
        self._sync_views()
        cur = self._con.cursor()
        fired = threading.Event()
        timer = None
        if self.timeout_s is not None:

            def stop() -> None:
                fired.set()
                cur.interrupt()

            timer = threading.Timer(self.timeout_s, stop)
            timer.daemon = True
        start = time.perf_counter()
        try:
            if timer is not None:
                timer.start()
            table, truncated = self._fetch(cur, sql)
        except duckdb.Error as exc:
            if fired.is_set() or isinstance(exc, duckdb.InterruptException):
                raise SandboxError(
                    f"query stopped after {self.timeout_s:g} s (the console's time limit): "
                    "narrow it with WHERE run_id = ... or a LIMIT"
                ) from None
            raise _explain(exc) from None
        finally:
            if timer is not None:
                timer.cancel()
            cur.close()
        return SandboxResult(table, truncated, time.perf_counter() - start)

    def _fetch(self, cur: duckdb.DuckDBPyConnection, sql: str) -> tuple[pa.Table, bool]:
        rel = cur.sql(sql)
        if rel is None:  # not a query after all
            return pa.table({}), False
        limit = self.row_limit
        if limit is None:
            return rel.to_arrow_table(), False
        reader = rel.to_arrow_reader(min(_BATCH_ROWS, limit + 1))
        batches, rows = [], 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows > limit:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
        if rows > limit:
            return table.slice(0, limit), True
        return table, False


def _explain(exc: duckdb.Error) -> QueryError:
    """DuckDB's error as one clear message; refusals by the lock-down become SandboxError."""
    text = str(exc).strip()
    if isinstance(exc, duckdb.PermissionException) or "Permission Error" in text:
        return SandboxError(f"reading or writing files outside the archive is not allowed in the SQL console ({text})")
    if "lock_configuration" in text or "configuration has been locked" in text.lower():
        return SandboxError(f"settings cannot be changed in the SQL console ({text})")
    if "extension" in text.lower() and ("autoload" in text.lower() or "install" in text.lower()):
        return SandboxError(f"extensions cannot be installed or loaded in the SQL console ({text})")
    return QueryError(f"query failed: {text}")
