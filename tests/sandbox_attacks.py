"""Hostile SQL shared by the sandbox suites (telemetry.read.sandbox directly, `flightlog sql`, the app's console).

Each attack is (id, sql, says): `sql` may hold `{root}` (the archive folder), `{outside}` (a folder
next to the archive holding a real Parquet and CSV file) and `{out}` (a path outside the archive
that must never be created). `says` is a piece of the one-line message the user must see:
"outside the archive" (file access refused), "read-only" (statement refused before it runs),
"one statement" (several statements), "time limit" (interrupted), or "query failed" (DuckDB's own
refusal, e.g. an unknown table or function, or its memory limit). `says` may list alternatives
separated by "|" (a memory bomb is stopped by the memory limit or the time limit, whichever is first).
"""

from __future__ import annotations

OUTSIDE = "outside the archive"
READ_ONLY = "read-only"
ONE = "one statement"
TIME = "time limit"
FAILED = "query failed"

ATTACKS: list[tuple[str, str, str]] = [
    # -- reading files outside the archive ------------------------------------------------------
    ("read_csv-abs", "SELECT * FROM read_csv('/etc/passwd')", OUTSIDE),
    ("read_csv_auto-outside", "SELECT * FROM read_csv_auto('{outside}/secret.csv')", OUTSIDE),
    ("read_parquet-outside", "SELECT * FROM read_parquet('{outside}/secret.parquet')", OUTSIDE),
    ("read_parquet-dotdot", "SELECT * FROM read_parquet('{root}/../outside/secret.parquet')", OUTSIDE),
    ("read_parquet-glob-dotdot", "SELECT * FROM read_parquet('{root}/../**/*.parquet')", OUTSIDE),
    ("read_parquet-list", "SELECT * FROM read_parquet(['{outside}/secret.parquet'])", OUTSIDE),
    ("parquet_metadata", "SELECT * FROM parquet_metadata('{outside}/secret.parquet')", OUTSIDE),
    ("read_json", "SELECT * FROM read_json('/etc/hostname')", OUTSIDE),
    ("read_text-abs", "SELECT * FROM read_text('/etc/passwd')", OUTSIDE),
    ("read_text-dotdot", "SELECT content FROM read_text('{root}/../../../../../../etc/passwd')", OUTSIDE),
    ("read_blob", "SELECT * FROM read_blob('/etc/hostname')", OUTSIDE),
    ("glob", "SELECT * FROM glob('/etc/*')", OUTSIDE),
    ("glob-dotdot", "SELECT * FROM glob('{root}/../*')", OUTSIDE),
    ("replacement-scan-path", "SELECT * FROM '{outside}/secret.csv'", OUTSIDE),
    ("proc-self-environ", "SELECT * FROM read_text('/proc/self/environ')", OUTSIDE),
    ("http-url", "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')", OUTSIDE),
    ("https-url", "SELECT * FROM read_parquet('https://example.com/x.parquet')", OUTSIDE),
    ("s3-url", "SELECT * FROM read_parquet('s3://bucket/x.parquet')", OUTSIDE),
    # -- writing, attaching, extensions -----------------------------------------------------------
    ("copy-to", "COPY (SELECT * FROM runs) TO '{out}'", READ_ONLY),
    ("copy-from", "COPY runs FROM '{outside}/secret.csv'", READ_ONLY),
    ("export-database", "EXPORT DATABASE '{out}'", READ_ONLY),
    ("attach", "ATTACH '{out}' AS other", READ_ONLY),
    ("attach-memory", "ATTACH ':memory:' AS scratch", READ_ONLY),
    ("detach", "DETACH memory", READ_ONLY),
    ("install", "INSTALL httpfs", READ_ONLY),
    ("force-install", "FORCE INSTALL httpfs", READ_ONLY),
    ("load", "LOAD httpfs", READ_ONLY),
    ("load-path", "LOAD '{outside}/evil.duckdb_extension'", READ_ONLY),
    # -- lifting the limits -------------------------------------------------------------------------
    ("set-external", "SET enable_external_access = true", READ_ONLY),
    ("set-lock", "SET lock_configuration = false", READ_ONLY),
    ("set-memory", "SET memory_limit = '1TB'", READ_ONLY),
    ("set-threads", "SET threads = 64", READ_ONLY),
    ("set-allowed-dirs", "SET allowed_directories = ['/']", READ_ONLY),
    ("set-global", "SET GLOBAL enable_external_access = true", READ_ONLY),
    ("reset-allowed", "RESET allowed_directories", READ_ONLY),
    ("pragma-set", "PRAGMA enable_external_access = true", READ_ONLY),
    ("pragma-threads", "PRAGMA threads = 64", READ_ONLY),
    ("call-pragma", "CALL pragma_database_list()", READ_ONLY),
    ("settings-tamper", "UPDATE duckdb_settings() SET value = 'true' WHERE name = 'enable_external_access'",
     FAILED),
    ("set-variable", "SET VARIABLE x = 1", READ_ONLY),
    # -- changing the views -------------------------------------------------------------------------
    ("create-table", "CREATE TABLE t AS SELECT 1", READ_ONLY),
    ("create-view", "CREATE OR REPLACE VIEW runs AS SELECT 1 AS x", READ_ONLY),
    ("create-macro", "CREATE MACRO evil() AS 1", READ_ONLY),
    ("insert-view", "INSERT INTO runs (run_id) VALUES ('x')", READ_ONLY),
    ("update-view", "UPDATE metrics SET value = 0", READ_ONLY),
    ("delete-view", "DELETE FROM metrics", READ_ONLY),
    ("drop-view", "DROP VIEW metrics", READ_ONLY),
    ("alter-view", "ALTER VIEW metrics RENAME TO m2", READ_ONLY),
    ("checkpoint", "CHECKPOINT", READ_ONLY),
    ("use", "USE system", READ_ONLY),
    # -- the caller's Python objects and the environment -----------------------------------------------
    ("replacement-scan-python", "SELECT * FROM secret_frame", FAILED),
    ("getenv", "SELECT getenv('HOME') AS h", FAILED),
    # -- several statements, hidden ones ----------------------------------------------------------------
    ("two-statements", "SELECT 1; DROP VIEW metrics", ONE),
    ("select-then-attach", "SELECT 1 ; ATTACH '{out}' AS o", ONE),
    ("comment-hides-statement", "SELECT 1 /* harmless */; /* really */ COPY runs TO '{out}'", ONE),
    ("line-comment-then-statement", "SELECT 1 -- ok\n; SET threads = 64", ONE),
    ("statement-in-string", "SELECT 'x'';DROP VIEW runs;--' AS s; DROP VIEW runs", ONE),
    # -- resource exhaustion (interrupted by the time limit or refused by DuckDB) -------------------------
    ("huge-range", "SELECT count(*) FROM range(1000000000000) a", TIME),
    ("range-1e12-float", "SELECT sum(range) FROM range(1e12::BIGINT)", TIME),
    ("cross-join", "SELECT sum(a.range * b.range) FROM range(10000000) a, range(10000000) b", TIME),
    ("recursive-cte", "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
     TIME),
    ("string-bomb", "SELECT length(repeat('x', 10000000000)) AS n", FAILED),
    ("string-bomb-aggregate", "SELECT length(string_agg(repeat('x', 1000000), '')) FROM range(100000000)",
     f"{TIME}|{FAILED}"),
    # one string function call that ignores DuckDB's interrupt for ~25 s and takes ~8 GB in-process
    ("string-bomb-4gb", "SELECT length(repeat('x', 4000000000)) AS n", f"{TIME}|{FAILED}"),
    ("string-bomb-rows", "SELECT repeat('x', 100000000) AS s FROM range(100)", f"{TIME}|{FAILED}"),
    ("list-bomb", "SELECT length(list(range)) FROM range(2000000000)", f"{TIME}|{FAILED}"),
]


def expected(says: str) -> list[str]:
    """The message pieces any one of which the user must see."""
    return says.split("|")

# A query that must work right after each attack (the process keeps serving).
GOOD_QUERY = "SELECT count(*) AS n FROM metrics"
