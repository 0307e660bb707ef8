"""Every command and API that takes a run resolves it by the one rule (telemetry.read.runs): a run id,
a display name (`runs.name`) or the name its id was made from (the slug) all mean the same run.

Runs of the archive:
- `run-a`, shown as "Pretty Name";
- `other run/2` (its id is a slug of that name), shown as "Run B shown": three ways to name it;
- `my run/1` (its id is a slug; no display name of its own, so it shows the name it was given).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.cli import main
from data_schema import run_id_from_name
from telemetry import Archive, Writer
from telemetry.read.runs import resolve_run
from telemetry.store.fs import open_fs

A_ID = "run-a"
B_ID = run_id_from_name("other run/2")
C_ID = run_id_from_name("my run/1")
# (what a person types, the run it means)
FORMS = [
    ("run-a", A_ID), ("Pretty Name", A_ID),
    (B_ID, B_ID), ("other run/2", B_ID), ("Run B shown", B_ID),
    (C_ID, C_ID), ("my run/1", C_ID),
]
FORM_IDS = [typed for typed, _ in FORMS]
MAIN = Path(__file__).resolve().parents[2] / "app" / "ui" / "main.py"


def write_runs(url: str) -> str:
    for run, name in (("run-a", "Pretty Name"), ("other run/2", "Run B shown"), ("my run/1", None)):
        with Writer(url, run=run, name=name) as w:
            for step in range(5):
                w.metrics(step, {"loss": 1.0 / (step + 1), "tokens_seen": 100.0 * step})
            w.event("nan", step=3, data_chunk=7)
    return url


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> str:
    """One archive for the commands that only read it."""
    return write_runs(str(tmp_path_factory.mktemp("runs") / "archive"))


@pytest.fixture()
def fresh(tmp_path) -> str:
    """An archive of its own, for commands that change it."""
    return write_runs(str(tmp_path / "archive"))


@pytest.fixture(autouse=True)
def _no_default_archive(monkeypatch):
    monkeypatch.delenv("FLIGHTLOG_ARCHIVE", raising=False)


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_archive_and_file_level_resolution_agree(shared, typed, run_id):
    with Archive(shared) as archive:
        assert archive.resolve_run(typed) == run_id
    fs, root = open_fs(shared)
    assert resolve_run(fs, root, typed) == run_id


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_incidents_accepts_every_name_of_a_run(shared, typed, run_id, capsys):
    assert main(["incidents", typed, "--archive", shared]) == 0
    assert f"incidents of run {run_id} " in capsys.readouterr().out


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_checkpoints_verify_accepts_every_name_of_a_run(shared, typed, run_id, capsys):
    assert main(["checkpoints", "verify", typed, "--archive", shared, "--files-only", "--quiet"]) == 0
    assert f"run {run_id} has no recorded checkpoints" in capsys.readouterr().out


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_publish_accepts_every_name_of_a_run(shared, typed, run_id, tmp_path):
    dest = str(tmp_path / "published")
    assert main(["publish", typed, "--to", dest, "--archive", shared, "--quiet"]) == 0
    with Archive(dest) as published:
        assert list(published.runs()["run_id"]) == [run_id]


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_compact_run_accepts_every_name_of_a_run(fresh, typed, run_id, capsys):
    assert main(["compact", fresh, "--run", typed, "--grace", "0", "--quiet"]) == 0
    assert "compacted 1 run(s)" in capsys.readouterr().out
    compacted = {p.parent.name.removeprefix("run_id=") for p in Path(fresh, "metrics").glob("*/compact-*.parquet")}
    assert compacted == {run_id}


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_import_evals_accepts_every_name_of_a_run(fresh, typed, run_id, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("step,benchmark,metric,value\n4,hellaswag,acc,0.31\n")
    assert main(["import", "evals", str(scores), "--run", typed, "--archive", fresh, "--quiet"]) == 0
    with Archive(fresh) as archive:
        assert archive.sql("SELECT DISTINCT run_id FROM evals").column("run_id").to_pylist() == [run_id]
        assert len(archive.runs()) == 3  # no new run was made of a name


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_memorization_finds_the_run_by_every_name(shared, typed, run_id, capsys):
    pytest.importorskip("torch")
    # the run has no checkpoints: resolving it is all this command gets to do before it stops
    assert main(["memorization", "--run", typed, "--archive", shared, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no recorded checkpoints" in err and "unknown run" not in err


@pytest.mark.parametrize(("typed", "run_id"), FORMS, ids=FORM_IDS)
def test_the_apps_run_parameter_accepts_every_name_of_a_run(shared, typed, run_id, monkeypatch):
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", shared)
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params["run"] = typed
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["_run_id"] == run_id
    assert at.query_params["run"] in (run_id, [run_id])  # the deep link now names the run by its id


def test_an_unknown_run_is_refused_by_every_command_with_the_known_runs(shared, capsys):
    for argv in (["incidents", "nope", "--archive", shared],
                 ["checkpoints", "verify", "nope", "--archive", shared, "--files-only"],
                 ["compact", shared, "--run", "nope"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "unknown run 'nope'" in err and A_ID in err, (argv, err)
