"""The SQL sandbox: nothing outside the archive, read-only, capped rows, a time limit."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from telemetry import Archive, SandboxedQuery, Writer
from telemetry.store.errors import QueryError, SandboxError


@pytest.fixture()
def archive(tmp_path) -> Archive:
    url = str(tmp_path / "archive")
    with Writer(url, run="r") as w:
        for s in range(50):
            w.metric(s, "loss", 1.0 / (s + 1))
    return Archive(url)


@pytest.fixture()
def outside(tmp_path, archive) -> str:
    """A real Parquet file next to (not inside) the archive, and a sibling folder sharing its prefix."""
    inside = archive.snapshot.files["metrics"][0].local
    target = tmp_path / "outside.parquet"
    shutil.copy(inside, target)
    sibling = tmp_path / "archive2"
    sibling.mkdir()
    shutil.copy(inside, sibling / "x.parquet")
    return str(target)


def assert_still_answers(sb: SandboxedQuery) -> None:
    assert sb.run("SELECT count(*) AS n FROM metrics").column("n")[0].as_py() == 50


ATTACKS = [
    ("read_csv", "SELECT * FROM read_csv('/etc/passwd')", "outside the archive"),
    ("read_text", "SELECT * FROM read_text('/etc/passwd')", "outside the archive"),
    ("read_blob", "SELECT * FROM read_blob('/etc/hostname')", "outside the archive"),
    ("glob", "SELECT * FROM glob('/etc/*')", "outside the archive"),
    ("remote url", "SELECT * FROM read_csv('https://example.com/x.csv')", "outside the archive"),
    ("copy to", "COPY (SELECT 1) TO '{tmp}/x.csv'", "read-only"),
    ("attach", "ATTACH '{tmp}/db.duckdb' AS d", "read-only"),
    ("install", "INSTALL httpfs", "read-only"),
    ("load", "LOAD httpfs", "read-only"),
    ("set", "SET enable_external_access = true", "read-only"),
    ("reset", "RESET allowed_directories", "read-only"),
    ("create table", "CREATE TABLE t AS SELECT 1", "read-only"),
    ("drop view", "DROP VIEW runs", "read-only"),
    ("pragma", "PRAGMA database_list", "read-only"),
    ("export", "EXPORT DATABASE '{tmp}/exp'", "read-only"),
    ("two statements", "SELECT 1; DROP VIEW metrics", "one statement"),
]


@pytest.mark.parametrize("sql,expected", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_and_sandbox_still_answers(archive, tmp_path, sql, expected):
    sb = SandboxedQuery(archive, timeout_s=5)
    with pytest.raises(SandboxError, match=expected):
        sb.run(sql.format(tmp=tmp_path))
    assert_still_answers(sb)
    assert not os.path.exists(tmp_path / "x.csv") and not os.path.exists(tmp_path / "db.duckdb")


def test_parquet_outside_the_archive_cannot_be_read(archive, outside, tmp_path):
    sb = SandboxedQuery(archive)
    for path in (outside, str(tmp_path / "archive2" / "x.parquet"), archive.local_root + "/../outside.parquet"):
        with pytest.raises(SandboxError, match="outside the archive"):
            sb.run(f"SELECT * FROM read_parquet('{path}')")
        with pytest.raises(SandboxError, match="outside the archive"):
            sb.run(f"SELECT * FROM parquet_metadata('{path}')")
    assert_still_answers(sb)


def test_files_inside_the_archive_can_be_read(archive):
    inside = archive.snapshot.files["metrics"][0].local
    inside_count = SandboxedQuery(archive).run(f"SELECT count(*) AS n FROM read_parquet('{inside}')")
    assert inside_count.column("n")[0].as_py() == 50


def test_the_lock_holds_even_below_the_statement_check(archive, tmp_path):
    """Defence in depth: the locked configuration refuses what the statement check would catch."""
    sb = SandboxedQuery(archive)
    con = sb._con.cursor()
    for sql in ("SET enable_external_access = true", "SET lock_configuration = false",
                f"COPY (SELECT 1) TO '{tmp_path}/y.csv'"):
        with pytest.raises(Exception):  # noqa: B017 - DuckDB's own error types vary by statement
            con.execute(sql)
    assert not os.path.exists(tmp_path / "y.csv")


def test_python_variables_of_the_caller_are_invisible(archive):
    import pandas as pd

    secret_frame = pd.DataFrame({"password": ["hunter2"]})  # noqa: F841 - the attack target
    sb = SandboxedQuery(archive)
    with pytest.raises(QueryError) as err:
        sb.run("SELECT * FROM secret_frame")
    assert "hunter2" not in str(err.value)
    assert_still_answers(sb)


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM range(1000000000000) a",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
    "SELECT sum(a.range * b.range) FROM range(10000000) a, range(10000000) b",
], ids=["huge range", "recursive cte", "cross join"])
def test_never_ending_query_is_stopped_within_the_limit(archive, sql):
    sb = SandboxedQuery(archive, timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(SandboxError, match=r"stopped after 0.5 s"):
        sb.run(sql)
    assert time.perf_counter() - start < 3.0
    assert_still_answers(sb)


def test_rows_are_capped_and_truncation_reported(archive):
    sb = SandboxedQuery(archive, row_limit=10)
    result = sb.run_result("SELECT * FROM metrics")
    assert result.table.num_rows == 10 and result.truncated
    table = sb.run("SELECT * FROM metrics")
    assert table.schema.metadata[b"flightlog.truncated"] == b"true"
    exact = sb.run_result("SELECT * FROM metrics LIMIT 10")
    assert exact.table.num_rows == 10 and not exact.truncated


def test_read_only_statement_forms_are_allowed(archive):
    sb = SandboxedQuery(archive)
    for sql in ("WITH x AS (SELECT 1 AS a) SELECT a FROM x", "DESCRIBE metrics", "SHOW TABLES", "EXPLAIN SELECT 1",
                "SUMMARIZE metrics", "FROM runs", "VALUES (1)"):
        assert sb.run(sql).num_rows >= 1, sql


def test_bad_sql_is_a_query_error_with_duckdbs_message(archive):
    with pytest.raises(QueryError, match="syntax error"):
        SandboxedQuery(archive).run("SELEC 1")
    with pytest.raises(QueryError, match="empty query"):
        SandboxedQuery(archive).run("   ")


def test_sandbox_follows_archive_refresh(archive):
    sb = SandboxedQuery(archive)
    with Writer(archive.url, run="r2") as w:
        w.metric(0, "loss", 1.0)
    archive.refresh()
    assert sb.run("SELECT count(DISTINCT run_id) AS n FROM metrics").column("n")[0].as_py() == 2
