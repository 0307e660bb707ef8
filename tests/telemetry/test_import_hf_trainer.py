"""`flightlog import hf-trainer`: a transformers.Trainer run from its trainer_state.json files comes back point
for point, each checkpoint-N folder as a checkpoint, overlapping histories once, torn files skipped and said.

The fixture (tests/fixtures/hf_trainer/make_fixture.py) was written by transformers' own TrainerState."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from app.cli import main as cli
from telemetry import Archive
from telemetry.importers._common import ImportSourceError
from telemetry.importers.hf_trainer import import_hf_trainer, merge_histories, metric_name, read_hf_trainer

OUTPUT = Path(__file__).resolve().parents[1] / "fixtures" / "hf_trainer" / "output"
RUN = "hf-output"


def _sql(root: str, query: str, params=()) -> list[dict]:
    a = Archive(root)
    try:
        return a.sql(query, list(params)).to_pylist()
    finally:
        a.close()


def _points(root: str) -> dict[tuple[int, str], float]:
    return {(r["step"], r["name"]): r["value"] for r in _sql(root, "SELECT step, name, value FROM metrics")}


def _expected(state_file: Path) -> dict[tuple[int, str], float]:
    want = {}
    for entry in json.loads(state_file.read_text())["log_history"]:
        for key, value in entry.items():
            if key != "step":
                want[(entry["step"], metric_name(key))] = float(value)
    return want


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_an_output_folder_imports_every_logged_value_once_with_nan_and_inf(tmp_path):
    root = str(tmp_path / "a")
    summary = import_hf_trainer(str(OUTPUT), root, quiet=True)
    got = _points(root)
    want = _expected(OUTPUT / "checkpoint-300" / "trainer_state.json")  # the newest history holds all the others
    assert summary.points == len(got) == len(want) == 167
    assert got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    assert math.isnan(got[(30, "loss")]) and got[(40, "grad_norm")] == math.inf
    assert got[(10, "lr")] == 5e-5 * (1 - 10 / 300) and got[(100, "tokens_seen")] == 409_600
    assert {k[0] for k in got if k[1] == "eval/loss"} == {100, 200, 300}


def test_each_checkpoint_folder_becomes_a_checkpoints_row(tmp_path):
    root = str(tmp_path / "a")
    import_hf_trainer(str(OUTPUT), root, quiet=True)
    rows = _sql(root, "SELECT * FROM checkpoints ORDER BY step")
    assert [r["step"] for r in rows] == [100, 200, 300]
    assert [r["tokens_seen"] for r in rows] == [409_600, 819_200, 1_228_800]
    assert [r["has_optimizer_state"] for r in rows] == [True, True, False]  # checkpoint-300: save_only_model
    assert all(r["weights_dtypes"] == ["bfloat16"] and r["bytes"] > 0 and not r["problems"] for r in rows)
    assert rows[0]["uri"] == str(OUTPUT / "checkpoint-100")


def test_the_final_summary_entry_is_kept_as_points_and_in_the_run_config(tmp_path):
    root = str(tmp_path / "a")
    import_hf_trainer(str(OUTPUT), root, quiet=True)
    got = _points(root)
    assert got[(300, "train/runtime")] == 321.5 and got[(300, "train/loss")] == 1.75
    run = _sql(root, "SELECT status, config_json FROM runs")[0]
    config = json.loads(run["config_json"])
    assert run["status"] == "finished"
    assert config["summary"]["train_loss"] == 1.75 and config["trainer_state"]["best_global_step"] == 200
    assert config["source"] == "hf-trainer" and config["source_path"] == str(OUTPUT)
    assert config["config"]["model"]["model_type"] == "gpt2"


def test_importing_twice_adds_nothing(tmp_path):
    root = str(tmp_path / "a")
    import_hf_trainer(str(OUTPUT), root, quiet=True)
    first = _sql(root, "SELECT count(*) AS n FROM metrics")[0]["n"]
    import_hf_trainer(str(OUTPUT), root, quiet=True)
    assert _sql(root, "SELECT count(*) AS n FROM metrics")[0]["n"] == first == 167
    assert _sql(root, "SELECT count(*) AS n FROM checkpoints")[0]["n"] == 3
    assert _sql(root, "SELECT count(*) AS n FROM runs")[0]["n"] == 1


def test_a_checkpoint_folder_or_its_state_file_imports_that_checkpoints_history(tmp_path):
    for path in (OUTPUT / "checkpoint-100", OUTPUT / "checkpoint-100" / "trainer_state.json"):
        run = read_hf_trainer(str(path))
        assert run.status == "crashed"  # 100 of 300 steps and no summary: the run had not finished there
        assert run.points == len(_expected(OUTPUT / "checkpoint-100" / "trainer_state.json"))
        assert [c["step"] for c in run.checkpoints] == [100]


def test_a_run_resumed_from_an_older_checkpoint_keeps_the_later_history(tmp_path):
    first = [{"step": s, "loss": 1.0} for s in (10, 20, 30)]
    resumed = [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 2.0}, {"step": 30, "loss": 2.0}, {"step": 40,
                                                                                               "loss": 2.0}]
    points, skipped = merge_histories([first, resumed])
    assert points == {(10, "loss"): 1.0, (20, "loss"): 2.0, (30, "loss"): 2.0, (40, "loss"): 2.0}
    assert skipped["values replaced by a later log of the same step"] == 2


def test_a_torn_state_file_in_a_folder_is_skipped_said_and_kept_as_a_checkpoint(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(OUTPUT, out)
    torn = out / "checkpoint-400"
    shutil.copytree(out / "checkpoint-300", torn)
    text = (torn / "trainer_state.json").read_text()
    (torn / "trainer_state.json").write_text(text[: len(text) // 2])  # the save was cut off by a crash
    root = str(tmp_path / "a")
    summary = import_hf_trainer(str(out), root, quiet=True)
    assert summary.points == 167 and summary.skipped == {"checkpoints with a torn or missing trainer_state.json": 1}
    rows = _sql(root, "SELECT step, problems FROM checkpoints ORDER BY step")
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert "not valid JSON" in rows[-1]["problems"][0]
    note = _sql(root, "SELECT message FROM events")[0]["message"]
    assert "checkpoint-400" in note


def test_a_torn_state_file_on_its_own_is_one_error_naming_file_and_line(tmp_path, capsys):
    state = tmp_path / "trainer_state.json"
    state.write_text((OUTPUT / "checkpoint-100" / "trainer_state.json").read_text()[:700])
    with pytest.raises(ImportSourceError, match=r"trainer_state.json line \d+: not valid JSON"):
        read_hf_trainer(str(state))
    assert cli(["import", "hf-trainer", str(state), "--archive", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(state) in err and "Traceback" not in err


def test_a_state_without_log_history_or_steps_is_refused(tmp_path):
    bad = tmp_path / "trainer_state.json"
    bad.write_text(json.dumps({"global_step": 3, "log_history": [{"loss": 1.0}]}))
    with pytest.raises(ImportSourceError, match="log_history entry 0 has no whole-number \"step\""):
        read_hf_trainer(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImportSourceError, match="no checkpoint-N folders"):
        read_hf_trainer(str(empty))


def test_a_state_written_by_the_installed_transformers_imports(tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt = tmp_path / "out" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    state = transformers.TrainerState(global_step=2, max_steps=2, log_history=[
        {"loss": float("nan"), "grad_norm": 1.5, "learning_rate": 1e-4, "epoch": 0.5, "step": 1},
        {"eval_loss": 2.0, "epoch": 1.0, "step": 2}])
    state.save_to_json(str(ckpt / "trainer_state.json"))
    run = read_hf_trainer(str(tmp_path / "out"))
    got = dict(zip(zip(run.metrics.column("step").to_pylist(), run.metrics.column("name").to_pylist(), strict=True),
                   run.metrics.column("value").to_pylist(), strict=True))
    assert math.isnan(got.pop((1, "loss")))
    assert got == {(1, "grad_norm"): 1.5, (1, "lr"): 1e-4, (1, "epoch"): 0.5, (2, "eval/loss"): 2.0, (2, "epoch"): 1.0}
    assert run.status == "finished"  # global_step reached max_steps


def test_cli_imports_and_detects_a_trainer_output(tmp_path, capsys):
    root = str(tmp_path / "a")
    assert cli(["import", "hf-trainer", str(OUTPUT), "--archive", root, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"imported 1 hf-trainer run(s) ({RUN}): 167 points")
    assert cli(["import", "auto", str(OUTPUT), "--archive", root, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "hf-trainer" in out.splitlines()[0] and "167 points" in out
