"""Importers: runs logged by real W&B (offline), TensorBoard, MLflow, CSV and JSONL come back point for point.

Fixtures are written once per session by the real libraries: 10,000+ steps, two runs each,
NaN and ±Inf among the values, nested keys for W&B.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import shutil
import warnings

import numpy as np
import pytest

from telemetry import Archive
from telemetry.importers import (
    ImportSourceError,
    import_csv,
    import_jsonl,
    import_mlflow,
    import_tensorboard,
    import_wandb,
)
from telemetry.importers.tabular import ColumnMap
from telemetry.store.errors import ArchiveError

STEPS = 10_000
SPECIAL = {17: math.nan, 18: math.inf, 19: -math.inf, 5000: math.nan}


def _loss(run: int, step: int) -> float:
    return SPECIAL.get(step, 1.0 / (step + 1) + run * 1e-3 + step * 1e-7)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _points(archive: str, run_id: str) -> dict[tuple[int, str], float]:
    a = Archive(archive)
    try:
        rows = a.sql("SELECT step, name, value FROM metrics WHERE run_id = ?", [run_id]).to_pylist()
    finally:
        a.close()
    return {(r["step"], r["name"]): r["value"] for r in rows}


def _assert_equal(got: dict, want: dict) -> None:
    assert len(got) == len(want)
    assert got.keys() == want.keys()
    bad = [k for k, v in want.items() if not _same(got[k], v)]
    assert not bad, f"{len(bad)} points differ, e.g. {bad[:3]}: {[(got[k], want[k]) for k in bad[:3]]}"


# ---- fixtures written by the real libraries -------------------------------------------------------

@pytest.fixture(scope="session")
def wandb_runs(tmp_path_factory):
    """Two offline W&B runs; the first also records system stats and nested keys."""
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("wandb")
    expected = {}
    for r in range(2):
        settings = wandb.Settings(x_stats_sampling_interval=0.2, mode="offline")
        run = wandb.init(project="imports", name=f"wb-{r}", config={"lr": 3e-4, "model": {"layers": 2 + r}},
                         dir=str(root), settings=settings, reinit="create_new")
        want = {}
        for step in range(STEPS):
            values = {"loss": _loss(r, step), "opt": {"lr": 3e-4 * (1 - step / STEPS)}}
            if step % 10 == 0:
                values["grad_norm"] = step * 0.125 + r
            run.log(values, step=step)
            want[(step, "loss")] = values["loss"]
            want[(step, "opt/lr")] = values["opt"]["lr"]
            if "grad_norm" in values:
                want[(step, "grad_norm")] = values["grad_norm"]
        run.summary["best_loss"] = 0.5
        run.finish()
        expected[run.id] = want
    files = {rid: glob.glob(str(root / "wandb" / f"offline-run-*-{rid}" / f"run-{rid}.wandb"))[0] for rid in expected}
    return {"root": str(root / "wandb"), "expected": expected, "files": files}


@pytest.fixture(scope="session")
def tb_runs(tmp_path_factory):
    """Two TensorBoard runs: simple_value scalars and tensor-encoded (new_style) scalars."""
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("tb") / "logs"
    expected = {}
    for r in range(2):
        w = SummaryWriter(str(root / f"run{r}"))
        want = {}
        for step in range(STEPS):
            loss = _loss(r, step)
            w.add_scalar("train/loss", loss, step)
            want[(step, "train/loss")] = float(np.float32(loss))  # TensorBoard stores float32
            if step % 5 == 0:
                w.add_scalar("lr", 3e-4 * step, step, new_style=True)
                want[(step, "lr")] = float(np.float32(3e-4 * step))
        w.close()
        expected[f"logs/run{r}"] = want
    return {"root": str(root), "expected": expected}


def _mlflow_log(uri: str, expected: dict, steps: int, runs: int = 2) -> None:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("imports")
    client = MlflowClient(uri)
    for r in range(runs):
        with mlflow.start_run(run_name=f"ml-{r}") as run:
            mlflow.log_params({"lr": 3e-4, "layers": 2 + r})
            want = {}
            batch = []
            for step in range(steps):
                value = _loss(r, step)
                batch.append(Metric("loss", value, 1_700_000_000_000 + step, step))
                want[(step, "loss")] = value
                if step % 4 == 0:
                    batch.append(Metric("eval/acc", step / steps, 1_700_000_000_000 + step, step))
                    want[(step, "eval/acc")] = step / steps
                if len(batch) >= 900:
                    client.log_batch(run.info.run_id, metrics=batch)
                    batch = []
            if batch:
                client.log_batch(run.info.run_id, metrics=batch)
            expected[run.info.run_id] = want


@pytest.fixture(scope="session")
def mlflow_sqlite(tmp_path_factory):
    pytest.importorskip("mlflow")
    warnings.filterwarnings("ignore")
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    expected = {}
    _mlflow_log(f"sqlite:///{db}", expected, STEPS)
    return {"uri": f"sqlite:///{db}", "path": str(db), "expected": expected}


@pytest.fixture(scope="session")
def mlflow_files(tmp_path_factory):
    pytest.importorskip("mlflow")
    warnings.filterwarnings("ignore")
    root = tmp_path_factory.mktemp("mlflowfs") / "mlruns"
    expected = {}
    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        _mlflow_log(root.as_uri(), expected, 2_000)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    return {"uri": root.as_uri(), "path": str(root), "expected": expected}


@pytest.fixture(scope="session")
def table_logs(tmp_path_factory):
    """A Pythia-style CSV (iteration, lm_loss, time) and a nested JSONL log, with NaN/Inf and gaps."""
    root = tmp_path_factory.mktemp("tables")
    want_csv, want_jsonl = {}, {}
    with open(root / "pythia.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "lm_loss", "grad_norm", "note", "time"])
        for step in range(STEPS):
            loss = _loss(0, step)
            gn = "" if step % 3 else repr(step * 0.5)
            w.writerow([step, repr(loss), gn, "x", 1_700_000_000 + step])
            want_csv[(step, "lm_loss")] = loss
            if gn:
                want_csv[(step, "grad_norm")] = step * 0.5
    with open(root / "log.jsonl", "w") as f:
        for step in range(STEPS):
            row = {"step": step, "train": {"loss": _loss(1, step)}}
            want_jsonl[(step, "train/loss")] = row["train"]["loss"]
            if step % 2 == 0:
                row["lr"] = 1e-4
                want_jsonl[(step, "lr")] = 1e-4
            f.write(json.dumps(row) + "\n")  # json writes NaN/Infinity tokens
    return {"csv": str(root / "pythia.csv"), "jsonl": str(root / "log.jsonl"), "want_csv": want_csv,
            "want_jsonl": want_jsonl}


# ---- W&B ------------------------------------------------------------------------------------------

def test_wandb_import_keeps_every_point_exactly_with_nan_inf_and_nested_keys(wandb_runs, tmp_path):
    archive = str(tmp_path / "a")
    summary = import_wandb(wandb_runs["root"], archive, quiet=True)
    assert sorted(summary.runs) == sorted(f"wandb-{rid}" for rid in wandb_runs["expected"])
    assert summary.points == sum(len(w) for w in wandb_runs["expected"].values())
    for rid, want in wandb_runs["expected"].items():
        _assert_equal(_points(archive, f"wandb-{rid}"), want)


def test_wandb_import_brings_config_summary_status_wall_time_and_system_stats(wandb_runs, tmp_path):
    archive = str(tmp_path / "a")
    import_wandb(wandb_runs["root"], archive, quiet=True)
    a = Archive(archive)
    runs = a.runs().set_index("run_id")
    rid = next(iter(wandb_runs["expected"]))
    run = runs.loc[f"wandb-{rid}"]
    assert run["status"] == "finished" and run["name"] == "wb-0" and run["project"] == "imports"
    assert run["steps"] == STEPS - 1
    cfg = json.loads(a.sql("SELECT config_json FROM runs WHERE run_id = ?", [f"wandb-{rid}"]).column(0)[0].as_py())
    assert cfg["source"] == "wandb" and cfg["source_path"].endswith(f"run-{rid}.wandb")
    assert cfg["config"] == {"lr": 3e-4, "model": {"layers": 2}}
    assert cfg["summary"]["best_loss"] == 0.5 and cfg["summary"]["opt"]["lr"] == pytest.approx(3e-4 / STEPS)
    times = a.sql("SELECT count(*) AS n, count(wall_time) AS t FROM metrics WHERE run_id = ?",
                  [f"wandb-{rid}"]).to_pylist()[0]
    assert times["n"] == times["t"]  # every point keeps its _timestamp
    system = a.sql("SELECT name, value FROM system WHERE run_id = ?", [f"wandb-{rid}"]).to_pylist()
    assert system and any(r["name"] == "cpu.util" for r in system)
    a.close()


def test_truncated_wandb_file_imports_its_complete_records_and_reports_skipped_bytes(wandb_runs, tmp_path):
    rid, path = next(iter(wandb_runs["files"].items()))
    raw = open(path, "rb").read()
    cut = len(raw) // 2 + 12345  # mid-block, mid-record: a crashed writer's torn tail
    torn = tmp_path / f"run-{rid}.wandb"
    torn.write_bytes(raw[:cut])
    archive = str(tmp_path / "a")
    summary = import_wandb(str(torn), archive, quiet=True)
    skipped = summary.skipped["bytes of a torn or damaged log"]
    assert 0 < skipped < 32768 + 7
    got = _points(archive, f"wandb-{rid}")
    want = wandb_runs["expected"][rid]
    assert 0 < len(got) < len(want)
    last = max(s for s, _ in got)
    assert all((s, n) in got for (s, n) in want if s < last)  # every step before the tear is complete
    assert all(_same(v, want[k]) for k, v in got.items())
    a = Archive(archive)
    assert a.runs().iloc[0]["status"] == "crashed"  # no exit record
    notes = a.events(kinds=["note"])
    assert len(notes) == 1 and str(skipped) in notes.iloc[0]["message"]
    a.close()


# ---- TensorBoard ------------------------------------------------------------------------------------

def test_tensorboard_import_keeps_every_scalar_as_its_float32_value(tb_runs, tmp_path):
    archive = str(tmp_path / "a")
    summary = import_tensorboard(tb_runs["root"], archive, quiet=True)
    assert summary.points == sum(len(w) for w in tb_runs["expected"].values())
    assert summary.skipped == {}
    for label, want in tb_runs["expected"].items():
        run_id = "tb-" + label.replace("/", "-")
        _assert_equal(_points(archive, run_id), want)
    a = Archive(archive)
    assert set(a.runs()["name"]) == {"logs/run0", "logs/run1"}
    assert a.sql("SELECT count(*) FROM metrics WHERE wall_time IS NULL").column(0)[0].as_py() == 0
    a.close()


# ---- MLflow ---------------------------------------------------------------------------------------------

def test_mlflow_sqlite_import_restores_nan_and_infinities_point_by_point(mlflow_sqlite, tmp_path):
    archive = str(tmp_path / "a")
    summary = import_mlflow(mlflow_sqlite["uri"], archive, quiet=True)
    assert len(summary.runs) == 2
    for uuid, want in mlflow_sqlite["expected"].items():
        _assert_equal(_points(archive, f"mlflow-{uuid}"), want)
    a = Archive(archive)
    cfg = json.loads(a.sql("SELECT config_json FROM runs LIMIT 1").column(0)[0].as_py())
    assert cfg["source"] == "mlflow" and cfg["config"]["lr"] == "0.0003"
    assert set(a.runs()["status"]) == {"finished"}
    wt = a.sql("SELECT min(wall_time) FROM metrics").column(0)[0].as_py()
    assert wt.timestamp() == 1_700_000_000.0
    a.close()


def test_mlflow_file_store_import_reads_metric_files(mlflow_files, tmp_path):
    archive = str(tmp_path / "a")
    for uri in (mlflow_files["uri"], mlflow_files["path"]):
        import_mlflow(uri, archive, quiet=True)
    for uuid, want in mlflow_files["expected"].items():
        _assert_equal(_points(archive, f"mlflow-{uuid}"), want)


# ---- CSV / JSONL ---------------------------------------------------------------------------------------

def test_csv_import_maps_columns_and_keeps_nan_inf_but_not_empty_cells(table_logs, tmp_path):
    archive = str(tmp_path / "a")
    summary = import_csv(table_logs["csv"], archive, quiet=True, run_name="pythia-160m",
                         columns=ColumnMap(step_col="iteration", wall_time_col="time"))
    assert summary.runs == ["pythia-160m"]
    _assert_equal(_points(archive, "pythia-160m"), table_logs["want_csv"])
    a = Archive(archive)
    assert a.sql("SELECT min(wall_time) FROM metrics").column(0)[0].as_py().timestamp() == 1_700_000_000
    a.close()
    only = str(tmp_path / "b")
    import_csv(table_logs["csv"], only, quiet=True, columns=ColumnMap(step_col="iteration", metrics=["lm_loss"]))
    assert set(n for _, n in _points(only, "csv-pythia")) == {"lm_loss"}


def test_jsonl_import_flattens_nested_keys(table_logs, tmp_path):
    archive = str(tmp_path / "a")
    import_jsonl(table_logs["jsonl"], archive, quiet=True)
    _assert_equal(_points(archive, "jsonl-log"), table_logs["want_jsonl"])


# ---- every importer -----------------------------------------------------------------------------------

def test_importing_the_same_source_twice_replaces_the_run(wandb_runs, tb_runs, mlflow_sqlite, table_logs, tmp_path):
    archive = str(tmp_path / "a")
    imports = [
        lambda: import_wandb(wandb_runs["root"], archive, quiet=True),
        lambda: import_tensorboard(tb_runs["root"], archive, quiet=True),
        lambda: import_mlflow(mlflow_sqlite["uri"], archive, quiet=True),
        lambda: import_csv(table_logs["csv"], archive, quiet=True),
        lambda: import_jsonl(table_logs["jsonl"], archive, quiet=True),
    ]
    for fn in imports:
        fn()

    def state():
        a = Archive(archive)
        out = (a.sql("SELECT count(*) FROM metrics").column(0)[0].as_py(), len(a.runs()),
               a.sql("SELECT count(*) FROM attempts").column(0)[0].as_py())
        a.close()
        return out, sorted(glob.glob(os.path.join(archive, "*", "run_id=*", "*")))

    first = state()
    for fn in imports:
        fn()
    assert state() == first
    assert first[0][1] == 8 and first[0][2] == 8  # 2 wandb + 2 tensorboard + 2 mlflow + csv + jsonl


def test_a_shorter_reimport_removes_the_old_segments(tb_runs, tmp_path):
    src = tmp_path / "tb"
    shutil.copytree(os.path.join(tb_runs["root"], "run0"), src / "run0")
    archive = str(tmp_path / "a")
    import_tensorboard(str(src), archive, quiet=True)
    event_file = next((src / "run0").iterdir())
    event_file.write_bytes(event_file.read_bytes()[:5000])
    summary = import_tensorboard(str(src), archive, quiet=True)
    assert summary.skipped.get("bytes of a torn event file", 0) > 0
    assert len(_points(archive, "tb-tb-run0")) == summary.points < len(tb_runs["expected"]["logs/run0"])


def test_import_refuses_to_overwrite_a_run_recorded_by_a_trainer(table_logs, tmp_path):
    from telemetry import Writer

    archive = str(tmp_path / "a")
    with Writer(archive, "pythia-160m") as w:
        w.metric(0, "loss", 1.0)
    with pytest.raises(ImportSourceError, match="already exists.*--run"):
        import_csv(table_logs["csv"], archive, quiet=True, run_name="pythia-160m")
    assert len(_points(archive, "pythia-160m")) == 1


@pytest.mark.parametrize("kind", ["wandb", "tensorboard", "mlflow", "csv", "jsonl"])
def test_a_wrong_or_corrupt_source_gives_one_clear_error_naming_the_file(kind, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01garbage that is no log at all\xff" * 10)
    folder = tmp_path / "empty"
    folder.mkdir()
    archive = str(tmp_path / "a")
    if kind == "wandb":
        cases = [(lambda: import_wandb(str(bad), archive, quiet=True), "not a W&B .wandb file"),
                 (lambda: import_wandb(str(folder), archive, quiet=True), "no .wandb files")]
    elif kind == "tensorboard":
        ev = folder / "events.out.tfevents.1.host"
        ev.write_bytes(bad.read_bytes())
        cases = [(lambda: import_tensorboard(str(folder), archive, quiet=True), "not a TensorBoard event file"),
                 (lambda: import_tensorboard(str(tmp_path / "nope"), archive, quiet=True), "does not exist")]
    elif kind == "mlflow":
        cases = [(lambda: import_mlflow(f"sqlite:///{bad}", archive, quiet=True), "not a readable SQLite"),
                 (lambda: import_mlflow(str(folder), archive, quiet=True), "not an MLflow file store"),
                 (lambda: import_mlflow("http://host:5000", archive, quiet=True), "not tracking servers")]
    elif kind == "csv":
        (tmp_path / "x.csv").write_text("step,name\n0,a\n")
        cases = [(lambda: import_csv(str(tmp_path / "x.csv"), archive, quiet=True), "no numeric metric columns"),
                 (lambda: import_csv(str(tmp_path / "x.csv"), archive, quiet=True,
                                     columns=ColumnMap(step_col="iter")), "no column 'iter'")]
    else:
        (tmp_path / "x.jsonl").write_text('{"step": 0}\nnot json\n')
        cases = [(lambda: import_jsonl(str(tmp_path / "x.jsonl"), archive, quiet=True), "line 2 is not valid JSON")]
    for fn, words in cases:
        with pytest.raises(ArchiveError, match=words) as err:
            fn()
        assert "\n" not in str(err.value)
    assert not glob.glob(os.path.join(archive, "metrics", "*"))


def test_cli_import_commands_print_a_summary_and_errors_as_one_line(table_logs, tmp_path, capsys, monkeypatch):
    from app.cli import main
    from app.cli.imports import add_import_commands

    parser = argparse.ArgumentParser(prog="flightlog")
    add_import_commands(parser.add_subparsers(dest="command"))
    archive = str(tmp_path / "a")
    args = parser.parse_args(["import", "csv", table_logs["csv"], "--archive", archive, "--quiet",
                              "--step-col", "iteration", "--wall-time-col", "time", "--metrics", "lm_loss,grad_norm"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("imported 1 csv run(s) (csv-pythia)") and "empty cells" in out
    monkeypatch.setenv("FLIGHTLOG_ARCHIVE", archive)
    assert main(["import", "wandb", str(tmp_path / "missing"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
