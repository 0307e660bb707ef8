"""SQL for untrusted users: read-only, inside the archive, with a row cap and a time limit.

Its own DuckDB connection holds the archive's views; then the configuration is locked so a
query cannot read, write or attach anything outside the archive's local folder, install or
load extensions, read the caller's Python variables, or change a setting back. Statements
other than queries are refused before they run, and a timer interrupts a query that runs
past its limit.

Queries run in a worker process (telemetry/sandbox_worker.py) holding the same locked views:
a few string functions allocate gigabytes in one step and ignore DuckDB's interrupt for tens of
seconds, so a query still running `grace` seconds after its time limit is ended by killing the
worker, and a fresh one answers the next query.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import duckdb
import pyarrow as pa

from telemetry.read.archive import Archive
from telemetry.read.curves import quote_str
from telemetry.read.views import create_views, new_connection
from telemetry.store.errors import QueryError, SandboxError

# Statement types a reader may run (DESCRIBE, SHOW, SUMMARIZE, WITH, VALUES parse as SELECT).
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
DEFAULT_MEMORY_LIMIT = "2GB"  # DuckDB's own default is 80% of the machine: one query must not take it all
KILL_GRACE_S = 1.0  # a query this long past its limit is ended by killing the worker
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")


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
        memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
    ):
        if row_limit is not None and row_limit < 1:
            raise ValueError("row_limit must be a positive number of rows, or None for no cap")
        self.archive = archive
        self.row_limit = row_limit
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._con = new_connection()
        create_views(self._con, archive.local_snapshot())  # its own connection reads local files only
        self._version = archive.version
        self._worker: _Worker | None = None
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
        self._settings = settings
        for stmt in settings:
            self._con.execute(stmt)

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
        self._con.close()

    def __del__(self) -> None:  # a cached sandbox dropped by Streamlit must not leave its worker behind
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.stop()

    def _sync_views(self) -> None:
        """Follow the archive's refreshes (new segments) with this connection's views (and a new worker)."""
        if self.archive.version != self._version:
            with self._lock:
                if self.archive.version != self._version:
                    create_views(self._con, self.archive.local_snapshot())
                    self._version = self.archive.version
                    if self._worker is not None:
                        self._worker.stop()
                        self._worker = None

    def _setup_statements(self) -> list[str]:
        """What a fresh worker runs: the connection's settings, the views, then the lock-down."""
        recorder = _Recorder()
        # GLOBAL: each query runs on a cursor, a new session that would not see plain SETs
        recorder.statements.extend(["SET GLOBAL TimeZone = 'UTC'", "SET GLOBAL parquet_metadata_cache = true",
                                    "SET GLOBAL parquet_can_have_nan = true"])  # NaN hides from min/max stats
        create_views(recorder, self.archive.local_snapshot())
        return recorder.statements + self._settings

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
        start = time.perf_counter()
        with self._lock:  # one query at a time per worker; others wait their turn
            if self._worker is None or not self._worker.alive():
                self._worker = _Worker(self._setup_statements())
            worker = self._worker
            wait = None if self.timeout_s is None else self.timeout_s + KILL_GRACE_S
            try:
                reply = worker.ask(("query", sql, self.row_limit, self.timeout_s), wait)
            except BaseException:  # KeyboardInterrupt included: never leave a query running
                worker.stop()
                self._worker = None
                raise
            if reply is None:  # past the limit and deaf to the interrupt: end it
                worker.stop()
                self._worker = None
                raise self._stopped() from None
        if reply[0] == "ok":
            import pyarrow.ipc as ipc

            table = ipc.open_stream(reply[1]).read_all()
            return SandboxResult(table, bool(reply[2]), time.perf_counter() - start)
        _, kind, text = reply
        if kind == "interrupted":
            raise self._stopped()
        if kind == "died":
            raise SandboxError("the query used more memory or time than the SQL console allows and was "
                               "stopped: narrow it with WHERE run_id = ... or a LIMIT")
        raise _explain_text(text, permission=(kind == "permission"))

    def _stopped(self) -> SandboxError:
        return SandboxError(
            f"query stopped after {self.timeout_s:g} s (the console's time limit): "
            "narrow it with WHERE run_id = ... or a LIMIT"
        )


class _Recorder:
    """Stands in for a DuckDB connection to collect the statements create_views runs."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, sql: str, *args: object) -> None:
        if args:
            raise ValueError("view statements take no parameters")
        self.statements.append(sql)


class _Worker:
    """One query process (sandbox_worker.py) and its two pipes."""

    def __init__(self, setup: list[str]) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, _WORKER, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.inbox = Connection(from_child_r, writable=False)
        reply = self.ask(setup, 60.0)
        if reply is None or reply[0] != "ready":
            self.stop()
            detail = reply[2] if reply and len(reply) > 2 else "no answer"
            raise SandboxError(f"the SQL console could not start its query process ({detail})")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, message: object, wait: float | None) -> tuple | None:
        """Send `message`; the reply, None after `wait` seconds, ("error", "died", ...) if the process ended."""
        try:
            self.outbox.send(message)
            if not self.inbox.poll(wait):
                return None
            return self.inbox.recv()
        except (EOFError, OSError):
            return ("error", "died", f"the query process ended (exit code {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # killed but not reaped yet: nothing more to do than closing its pipes
        for conn in (self.outbox, self.inbox):
            try:
                conn.close()
            except OSError:
                pass  # already closed by the worker's end


def _explain_text(text: str, *, permission: bool = False) -> QueryError:
    """DuckDB's error as one clear message; refusals by the lock-down become SandboxError."""
    if permission or "Permission Error" in text:
        return SandboxError(f"reading or writing files outside the archive is not allowed in the SQL console ({text})")
    if "lock_configuration" in text or "configuration has been locked" in text.lower():
        return SandboxError(f"settings cannot be changed in the SQL console ({text})")
    if "extension" in text.lower() and ("autoload" in text.lower() or "install" in text.lower()):
        return SandboxError(f"extensions cannot be installed or loaded in the SQL console ({text})")
    return QueryError(f"query failed: {text}")
