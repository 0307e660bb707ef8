"""Every hostile query of tests/sandbox_attacks.py through telemetry.read.sandbox directly: refused or
stopped within the time limit with a one-line message, nothing written outside the archive, and
the same sandbox answers a good query right after."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from sandbox_attacks import ATTACKS, GOOD_QUERY, expected

from telemetry import Archive, SandboxedQuery, Writer
from telemetry.store.errors import ArchiveError

TIMEOUT_S = 1.0
SLACK_S = 3.0  # the worker is killed KILL_GRACE_S after the limit; a fresh one starts for the next query


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(sandbox, paths): an archive with 50 points, and an `outside` folder holding secrets."""
    base = tmp_path_factory.mktemp("attacks")
    root = str(base / "archive")
    with Writer(root, run="r") as w:
        for s in range(50):
            w.metric(s, "loss", 1.0 / (s + 1))
    archive = Archive(root)
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(archive.snapshot.files["metrics"][0].local, outside / "secret.parquet")
    (outside / "secret.csv").write_text("password\nhunter2\n")
    sb = SandboxedQuery(archive, timeout_s=TIMEOUT_S)
    yield sb, {"root": archive.local_root, "outside": str(outside), "out": str(base / "stolen")}, base
    sb.close()


def _listing(base) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), base) for d, _, files in os.walk(base) for f in files} | {
        os.path.relpath(d, base) for d, _, _ in os.walk(base)}


@pytest.mark.parametrize("sql,says", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_or_stopped_and_the_sandbox_keeps_serving(world, sql, says):
    sb, paths, base = world
    secret_frame = {"password": ["hunter2"]}  # noqa: F841 - a caller's variable the SQL must not see
    before = _listing(base)
    start = time.perf_counter()
    with pytest.raises(ArchiveError) as err:
        sb.run(sql.format(**paths))
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert any(piece in message for piece in expected(says)), message
    assert "hunter2" not in message and "Traceback" not in message
    assert elapsed < TIMEOUT_S + SLACK_S, f"took {elapsed:.1f} s"
    assert _listing(base) == before  # nothing created anywhere next to the archive
    assert sb.run(GOOD_QUERY).column("n")[0].as_py() == 50


def test_the_attack_list_covers_every_class_the_console_must_refuse():
    ids = {a[0] for a in ATTACKS}
    assert len(ATTACKS) >= 30
    for needed in ("read_csv-abs", "read_parquet-dotdot", "read_json", "read_text-abs", "read_blob", "glob",
                   "copy-to", "export-database", "attach", "detach", "install", "force-install", "load",
                   "set-external", "reset-allowed", "pragma-set", "set-memory", "set-threads", "set-lock",
                   "set-allowed-dirs", "create-table", "insert-view", "drop-view", "update-view", "call-pragma",
                   "settings-tamper", "replacement-scan-python", "getenv", "https-url", "cross-join",
                   "recursive-cte", "huge-range", "string-bomb", "two-statements", "comment-hides-statement",
                   "select-then-attach"):
        assert needed in ids, needed


def test_a_query_deaf_to_the_interrupt_is_killed_and_memory_is_capped(world):
    """repeat('x', 4e9) ignores DuckDB's interrupt for ~25 s in-process; the worker is killed instead."""
    sb, _, _ = world
    start = time.perf_counter()
    with pytest.raises(ArchiveError, match="time limit|query failed"):
        sb.run("SELECT length(repeat('x', 4000000000)) AS n")
    assert time.perf_counter() - start < TIMEOUT_S + SLACK_S
    settings = sb.run("SELECT value FROM duckdb_settings() WHERE name = 'memory_limit'").column("value")[0].as_py()
    assert settings.endswith("GiB") and float(settings.split()[0]) <= 2.0, settings
