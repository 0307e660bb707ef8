"""The flightlog CLI: commands over a real archive, exit codes, and no traceback for bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from app.cli import main
from data_schema import run_id_from_name
from telemetry import Writer

CLI_ID = run_id_from_name("cli run")  # the folder name of the run called "cli run"


@pytest.fixture()
def archive(tmp_path, monkeypatch) -> str:
    url = str(tmp_path / "archive")
    for seed, start in ((1, 0), (2, 4)):
        with Writer(url, run="cli run", seed=seed, resumed_from_step=start or None) as w:
            for s in range(start, start + 8):
                w.metrics(s, {"loss": float(s), "tokens_seen": 10.0 * s})
            w.event("nan", step=start + 2, data_chunk=5)
    monkeypatch.delenv("FLIGHTLOG_ARCHIVE", raising=False)
    return url


def test_runs_lists_the_runs(archive, capsys):
    assert main(["runs", "--archive", archive]) == 0
    out = capsys.readouterr().out
    assert CLI_ID in out and "cli run" in out and "finished" in out


def test_archive_defaults_to_the_environment_variable(archive, capsys, monkeypatch):
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", archive)
    assert main(["runs", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["run_id"] == CLI_ID


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "table"])
def test_sql_prints_results_in_each_format(archive, capsys, fmt):
    assert main(["sql", "SELECT step, value FROM journey_metrics WHERE name = 'loss' ORDER BY step",
                 "--archive", archive, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "csv":
        assert out.splitlines()[0] == "step,value" and len(out.splitlines()) == 13
    elif fmt == "json":
        assert [r["step"] for r in json.loads(out)] == list(range(12))
    elif fmt == "jsonl":
        assert [json.loads(line)["step"] for line in out.splitlines()] == list(range(12))
    else:
        assert "step" in out and "11" in out


def test_sql_csv_quotes_only_where_csv_needs_it(archive, capsys):
    """`flightlog sql ... --format csv | tail -1` hands the shell the value, not the value in quotes."""
    query = ("SELECT run_id, 'a,b' AS comma, 'say \"hi\"' AS quote, 'two' || chr(10) || 'lines' AS newline, "
             "'' AS empty, NULL::VARCHAR AS missing, 1.5 AS number FROM runs")
    assert main(["sql", query, "--archive", archive, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "run_id,comma,quote,newline,empty,missing,number"
    assert out == ("run_id,comma,quote,newline,empty,missing,number\n"
                   f'{CLI_ID},"a,b","say ""hi""","two\nlines","",,1.5\n')
    rows = list(csv.reader(io.StringIO(out)))  # and any CSV reader reads the values back
    assert rows[1] == [CLI_ID, "a,b", 'say "hi"', "two\nlines", "", "", "1.5"]


def test_sql_json_is_one_array_and_jsonl_one_object_per_line(archive, capsys):
    query = "SELECT step, value FROM journey_metrics WHERE name = 'loss' AND step < 3 ORDER BY step"
    assert main(["sql", query, "--archive", archive, "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == [{"step": 0, "value": 0.0}, {"step": 1, "value": 1.0}, {"step": 2, "value": 2.0}]
    assert main(["sql", query, "--archive", archive, "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"step": s, "value": float(s)} for s in range(3)]
    assert main(["sql", query.replace("step < 3", "step < 0"), "--archive", archive, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # no rows is still one array


def test_runs_and_incidents_take_json_and_jsonl_too(archive, capsys):
    assert main(["runs", "--archive", archive, "--format", "jsonl"]) == 0
    assert [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()] == [CLI_ID]
    assert main(["incidents", "cli run", "--archive", archive, "--format", "json"]) == 0
    assert [(e["attempt"], e["rank"], e["step"]) for e in json.loads(capsys.readouterr().out)] == [(0, 0, 2), (1, 0, 6)]


def test_sql_writes_parquet_to_a_file(archive, tmp_path):
    out = tmp_path / "out.parquet"
    assert main(["sql", "SELECT * FROM metrics", "--archive", archive, "--format", "parquet",
                 "--output", str(out)]) == 0
    assert pq.read_table(out).num_rows == 32


def test_sql_is_read_only_even_for_the_owner(archive, capsys, tmp_path):
    assert main(["sql", f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", "--archive", archive]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flightlog: error: ") and "read-only" in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()


def test_sql_timeout_stops_a_runaway_query(archive, capsys):
    assert main(["sql", "SELECT count(*) FROM range(1000000000000)", "--archive", archive, "--timeout", "0.3"]) == 2
    assert "stopped after 0.3 s" in capsys.readouterr().err


def test_bad_sql_is_one_line_and_exit_code_2(archive, capsys):
    assert main(["sql", "SELECT * FROM nope", "--archive", archive]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err and "Traceback" not in err


def test_missing_archive_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["runs", "--archive", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flightlog: error: no flightlog archive at") and len(err.strip().splitlines()) == 1


def test_unknown_run_lists_known_runs(archive, capsys):
    assert main(["incidents", "no such run", "--archive", archive]) == 2
    assert f"known runs: {CLI_ID}" in capsys.readouterr().err


def test_incidents_per_chunk_across_attempts_and_seeds(archive, capsys):
    assert main(["incidents", "cli run", "--archive", archive]) == 0
    out = capsys.readouterr().out
    assert "chunk 5: 2 incident(s) in 2 attempt(s), seeds [1, 2]" in out and "fails in every attempt" in out


def test_verify_ok_and_problems_exit_1(archive, capsys):
    assert main(["verify", archive]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    folder = os.path.join(archive, "metrics", f"run_id={CLI_ID}")
    with open(os.path.join(folder, "part-a0-r0-00000999.parquet"), "wb") as fh:
        fh.write(b"no footer")
    assert main(["verify", archive]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "part-a0-r0-00000999.parquet" in err


def test_index_recovers_and_writes_the_manifest(archive, capsys):
    pytest.importorskip("telemetry.maintain.manifest")
    assert main(["index", archive, "--quiet"]) == 0
    assert os.path.exists(os.path.join(archive, "_manifest", "manifest.json"))
    assert main(["verify", archive]) == 0


def test_demo_without_the_trainer_says_what_to_install_or_runs(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["demo"]) == 2
    assert "pip install 'flightlog[train]'" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    exe = shutil.which("flightlog") or os.path.join(os.path.dirname(sys.executable), "flightlog")
    env = {**os.environ, "FLIGHTLOG_ARCHIVE": str(tmp_path / "nowhere")}
    proc = subprocess.run([exe, "runs"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("flightlog: error: no flightlog archive") and "Traceback" not in proc.stderr
    proc = subprocess.run([exe, "sql", "SELEC 1"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_incidents_of_a_run_without_seeds_list_no_seeds(tmp_path, capsys):
    url = str(tmp_path / "noseed")
    with Writer(url, run="no seed") as w:
        w.metric(1, "loss", float("nan"))
        w.event("nan", step=1, data_chunk=3, sample_ids=[4, 5])
    assert main(["incidents", "no seed", "--archive", url]) == 0
    out = capsys.readouterr().out
    assert "chunk 3: 1 incident(s) in 1 attempt(s), seeds []" in out


def test_incidents_show_the_rank(tmp_path, capsys):
    """Every rank reports the NaN of a step: the rows differ by their rank, which the table shows."""
    url = str(tmp_path / "ranks")
    for rank in (1, 0):
        with Writer(url, run="two ranks", rank=rank, world_size=2) as w:
            w.metric(3, "loss", float("nan"))
            w.event("nan", step=3, data_chunk=7)
    assert main(["incidents", "two ranks", "--archive", url]) == 0
    out = capsys.readouterr().out
    header, *rows = out.split("2 incident(s):\n")[1].splitlines()
    assert header.split()[:4] == ["attempt", "seed", "rank", "step"]
    assert [row.split()[2] for row in rows] == ["0", "1"]  # one row per rank, in rank order
