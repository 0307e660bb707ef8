"""Bad input through the `flightlog` CLI: exit code 2 and one line `flightlog: error: ...` (never a
traceback, never an internal error), or the input stored faithfully; nothing escapes the archive.
Every hostile query of tests/sandbox_attacks.py runs through `flightlog sql` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sandbox_attacks import ATTACKS, GOOD_QUERY, expected

from app.cli import main
from telemetry import Archive, Writer

REPO = Path(__file__).resolve().parents[2]
RUN_NAMES = ["../../etc", "a/b", "C:\\x", "x'; DROP TABLE runs; --", "a=b", "nul\x00x", "", "x" * 10_000, "λ😀", ".."]
TIMEOUT_S = 2.0
SLACK_S = 8.0  # interpreter start and imports of a fresh process on a busy 2-core machine


@pytest.fixture()
def world(tmp_path, monkeypatch):
    monkeypatch.delenv("FLIGHTLOG_ARCHIVE", raising=False)
    url = str(tmp_path / "archive")
    with Writer(url, run="r") as w:
        for s in range(50):
            w.metric(s, "loss", 1.0)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "ok.csv").write_text("step,loss\n1,2\n-1,3\n1,4\n0,nan\n2,inf\n")
    return tmp_path, url


def tree(base) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), base) for d, dirs, files in os.walk(base) for n in dirs + files}


def one_line_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("flightlog")]
    assert len(err) == 1, err
    assert err[0].startswith("flightlog: error: "), err[0]
    return err[0]


CASES = [
    (["runs", "--archive", "{d}/nope"], "no flightlog archive"),
    (["runs", "--archive", "{d}/afile"], "is a file, not an archive folder"),
    (["runs", "--archive", "nul\x00"], "embedded null byte"),
    (["sql", "", "--archive", "{url}"], "empty query"),
    (["sql", "SELEC 1", "--archive", "{url}"], "syntax error"),
    (["sql", "SELECT 1", "--archive", "{url}", "--max-rows", "0"], "--max-rows must be a positive"),
    (["sql", "SELECT 1", "--archive", "{url}", "--max-rows", "-1"], "--max-rows must be a positive"),
    (["sql", "SELECT 1", "--archive", "{url}", "--timeout", "-1"], "--timeout must be"),
    (["sql", "SELECT 1", "--archive", "{url}", "--timeout", "nan"], "--timeout must be"),
    (["sql", "SELECT 1", "--archive", "{url}", "--timeout", "0"], "--timeout must be"),
    (["sql", "SELECT 1", "--archive", "{url}", "--timeout", "inf"], "--timeout must be"),
    (["sql", "SELECT 1", "--archive", "{url}", "--format", "parquet"], "--output FILE"),
    (["sql", "SELECT 1", "--archive", "{url}", "--output", "{d}/nodir/x.csv"], "cannot write --output"),
    (["sql", "SELECT 1", "--archive", "{url}", "--output", "{d}/adir"], "cannot write --output"),
    (["sql", "SELECT 1", "--archive", "{url}", "--format", "parquet", "--output", "{d}/adir"], "cannot write --output"),
    (["index", "{d}/nope"], "no flightlog archive"),
    (["index", "{d}/afile"], "is a file"),
    (["verify", "{d}/nope"], "no flightlog archive"),
    (["verify", "{d}/afile"], "is a file"),
    (["ui", "{d}/nope"], "no flightlog archive"),
    (["ui", "{url}", "--port", "-1"], "--port must be"),
    (["ui", "{url}", "--port", "70000"], "--port must be"),
    (["import", "csv", "{d}/nope.csv", "--archive", "{url}", "--quiet"], "is not a file"),
    (["import", "csv", "{d}/adir", "--archive", "{url}", "--quiet"], "is not a file"),
    (["import", "csv", "{d}/ok.csv", "--archive", "{url}", "--quiet", "--step-col", "nope"], "has no column 'nope'"),
    (["import", "csv", "{d}/ok.csv", "--archive", "{d}/afile", "--quiet"], "cannot write to archive"),
    (["import", "jsonl", "{d}/afile", "--archive", "{url}", "--quiet"], "not valid JSON"),
    (["import", "tensorboard", "{d}/nope", "--archive", "{url}", "--quiet"], "does not exist"),
    (["import", "wandb", "{d}/afile", "--archive", "{url}", "--quiet"], "is not a W&B"),
    (["import", "mlflow", "{d}/nope", "--archive", "{url}", "--quiet"], "is not a folder"),
] + [(["incidents", r, "--archive", "{url}"], "unknown run") for r in RUN_NAMES]


@pytest.mark.parametrize("argv, says", CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line_and_exit_2(world, capsys, argv, says):
    d, url = world
    before = tree(d)
    argv = [a.replace("{d}", str(d)).replace("{url}", url) for a in argv]
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert says in line and "internal error" not in line
    assert {p for p in tree(d) - before if not p.startswith("archive")} == set()


@pytest.mark.parametrize("run", RUN_NAMES, ids=range(len(RUN_NAMES)))
def test_import_with_a_hostile_run_name_keeps_the_name_and_stays_inside(world, capsys, run):
    d, url = world
    before = tree(d)
    assert main(["import", "csv", str(d / "ok.csv"), "--archive", url, "--quiet", "--run", run]) == 0
    a = Archive(url)
    row = a.sql("SELECT run_id, name FROM runs WHERE run_id <> 'r'").to_pylist()
    assert len(row) == 1 and row[0]["name"] == (run or row[0]["name"])
    values = a.sql("SELECT step, value FROM metrics WHERE run_id = ? ORDER BY step, value",
                   [row[0]["run_id"]]).to_pylist()
    assert [v["step"] for v in values] == [-1, 0, 1, 1, 2]  # negative and duplicated steps kept
    assert {p for p in tree(d) - before if not p.startswith("archive")} == set()


# Every attack goes through the sandbox itself and the app console (tests/telemetry/test_sandbox_attacks.py,
# tests/app/test_bad_query_params.py); the CLI route is the same sandbox behind one more process, so it
# takes one attack of each kind (a fresh interpreter per query costs ~3 s on this machine).
CLI_ATTACKS = [a for a in ATTACKS if a[0] in {
    "read_csv-abs", "read_parquet-dotdot", "glob", "replacement-scan-path", "https-url", "copy-to", "attach",
    "install", "set-external", "pragma-set", "create-view", "getenv", "comment-hides-statement",
    "recursive-cte", "string-bomb-4gb"}]


def test_attacks_through_flightlog_sql_fail_with_one_line(world):
    """Each attack in its own `flightlog sql` process: exit 2, one line, within the time limit + slack."""
    d, url = world
    outside = d / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("password\nhunter2\n")
    paths = {"root": url, "outside": str(outside), "out": str(d / "stolen")}
    before = tree(d)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FLIGHTLOG_DEBUG", None)
    failures = []
    assert len(CLI_ATTACKS) == 15
    pending = list(CLI_ATTACKS)
    while pending:  # two at a time: the machine has 2 cores
        batch, pending = pending[:2], pending[2:]
        procs = []
        for ident, sql, says in batch:
            cmd = [sys.executable, "-m", "app.cli", "sql", sql.format(**paths), "--archive", url,
                   "--timeout", str(TIMEOUT_S)]
            procs.append((ident, says, time.perf_counter(),
                          subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)))
        for ident, says, start, proc in procs:
            try:
                out, err = proc.communicate(timeout=TIMEOUT_S + SLACK_S + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                failures.append(f"{ident}: hung")
                continue
            elapsed = time.perf_counter() - start
            lines = [ln for ln in err.splitlines() if ln.strip()]
            if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("flightlog: error: "):
                failures.append(f"{ident}: rc={proc.returncode} stderr={err[-300:]!r}")
            elif not any(piece in lines[0] for piece in expected(says)) or "hunter2" in out + err:
                failures.append(f"{ident}: said {lines[0][:200]!r}")
            elif elapsed > TIMEOUT_S + SLACK_S:
                failures.append(f"{ident}: took {elapsed:.1f} s")
    assert failures == []
    assert tree(d) == before
    good = subprocess.run([sys.executable, "-m", "app.cli", "sql", GOOD_QUERY, "--archive", url, "--format", "csv"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and good.stdout.split() == ["n", "50"]
