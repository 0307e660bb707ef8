"""The process that runs the SQL console's queries (telemetry.read.sandbox starts it).

Why a process: some queries cannot be interrupted in time from inside DuckDB. A single string
function (`repeat('x', 4000000000)`) runs for tens of seconds and allocates gigabytes outside the
memory limit before DuckDB looks at an interrupt again. In a process of its own such a query is
killed when its time is up, and the app that asked keeps serving.

It is started as a script (`python sandbox_worker.py READ_FD WRITE_FD`) and imports only duckdb
and pyarrow: a fresh worker starts fast, and nothing of the caller (its variables, its __main__)
exists in it. Protocol over two pipes (multiprocessing Connections): the parent sends the setup
statements (views, then the lock-down settings), then ("query", sql, row_limit, timeout_s); the
worker answers
("ok", arrow_ipc_bytes, truncated) or ("error", kind, message) with kind one of
"interrupted", "permission", "other".
"""

from __future__ import annotations

import threading
from typing import Any

_BATCH_ROWS = 65_536


def serve(inbox: Any, outbox: Any) -> None:
    """Run the setup statements, then answer queries until the pipe closes."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(":memory:")
    try:
        for stmt in inbox.recv():
            con.execute(stmt)
    except duckdb.Error as exc:
        outbox.send(("error", "setup", str(exc).strip()))
        return
    outbox.send(("ready",))
    conn = outbox
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            return
        if not msg or msg[0] != "query":
            return
        _, sql, row_limit, timeout_s = msg
        cur = con.cursor()
        fired = threading.Event()
        timer = None
        if timeout_s is not None:
            def stop(fired: threading.Event = fired, cur: Any = cur) -> None:
                fired.set()
                cur.interrupt()
            timer = threading.Timer(timeout_s, stop)
            timer.daemon = True
            timer.start()
        try:
            table, truncated = _fetch(cur, sql, row_limit, pa)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            reply: tuple = ("ok", sink.getvalue().to_pybytes(), truncated)
        except duckdb.Error as exc:
            text = str(exc).strip()
            if fired.is_set() or isinstance(exc, duckdb.InterruptException):
                reply = ("error", "interrupted", text)
            elif isinstance(exc, duckdb.PermissionException) or "Permission Error" in text:
                reply = ("error", "permission", text)
            else:
                reply = ("error", "other", text)
        except Exception as exc:  # noqa: BLE001 - Arrow conversion of odd results: the reader's query, one message
            reply = ("error", "other", f"{type(exc).__name__}: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            cur.close()
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


def _fetch(cur: Any, sql: str, limit: int | None, pa: Any) -> tuple[Any, bool]:
    rel = cur.sql(sql)
    if rel is None:  # not a query after all
        return pa.table({}), False
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


def main(argv: list[str]) -> None:
    from multiprocessing.connection import Connection

    serve(Connection(int(argv[1]), writable=False), Connection(int(argv[2]), readable=False))


if __name__ == "__main__":
    import sys

    main(sys.argv)
