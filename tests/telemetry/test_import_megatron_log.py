"""`flightlog import megatron`: a Megatron-LM stdout log (as training_log and evaluate_and_print_results print
it, behind `[rank0]:` and srun prefixes) comes back value for value; a restart is a new attempt; skipped and
NaN iterations are events; a torn last line is skipped and said; a damaged line is one error naming it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.cli import main as cli
from telemetry import Archive
from telemetry.importers._common import ImportSourceError
from telemetry.importers.megatron_log import import_megatron, is_megatron_log, read_megatron_log

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "megatron" / "pretrain_gpt.log"
RUN = "megatron-pretrain_gpt"


def _sql(root: str, query: str, params=()) -> list[dict]:
    a = Archive(root)
    try:
        return a.sql(query, list(params)).to_pylist()
    finally:
        a.close()


@pytest.fixture
def archive(tmp_path) -> str:
    root = str(tmp_path / "a")
    import_megatron(str(LOG), root, quiet=True)
    return root


def _points(root: str) -> dict[tuple[int, int, str], float]:
    rows = _sql(root, "SELECT attempt, step, name, value FROM metrics")
    return {(r["attempt"], r["step"], r["name"]): r["value"] for r in rows}


def test_every_field_of_every_iteration_line_is_a_point_with_its_value(archive):
    got = _points(archive)
    assert got[(0, 10, "loss")] == 8.4 and got[(0, 10, "lr")] == 1e-4
    assert got[(0, 10, "consumed_samples")] == 320 and got[(0, 10, "global_batch_size")] == 32
    assert got[(0, 10, "step_time_s")] == 1.501 and got[(0, 10, "tflops_per_gpu")] == 120.1
    assert got[(0, 30, "loss_scale")] == 32768.0 and got[(0, 30, "skipped_iterations")] == 2
    # Megatron prints no lm loss for an interval whose average is NaN; its grad norm prints as nan
    assert (0, 40, "loss") not in got and math.isnan(got[(0, 40, "grad_norm")])
    assert got[(1, 70, "grad_norm")] == math.inf
    steps = {(a, s) for a, s, n in got if n == "loss"}
    assert steps == {(0, s) for s in (10, 20, 30, 50, 60)} | {(1, s) for s in range(60, 120, 10)}


def test_validation_and_test_blocks_become_val_and_test_points(archive):
    got = _points(archive)
    assert got[(0, 50, "val/loss")] == 6.54321 and got[(0, 50, "val/ppl")] == 694.2123
    assert got[(1, 100, "val/loss")] == 5.1234
    assert got[(1, 110, "test/loss")] == 5.1 and got[(1, 110, "test/ppl")] == 164.0219


def test_timestamps_behind_prefixes_are_the_wall_times(archive):
    rows = _sql(archive, "SELECT wall_time FROM metrics WHERE attempt = 1 AND step = 60 AND name = 'loss'")
    assert rows[0]["wall_time"].isoformat() == "2024-05-01T13:06:00+00:00"


def test_a_restart_is_a_new_attempt_and_the_journey_takes_the_later_one(archive):
    attempts = _sql(archive, "SELECT attempt, resumed_from_step, end_status FROM attempts ORDER BY attempt")
    assert attempts == [{"attempt": 0, "resumed_from_step": None, "end_status": "crashed"},
                        {"attempt": 1, "resumed_from_step": 50, "end_status": "crashed"}]
    both = _sql(archive, "SELECT attempt, value FROM metrics WHERE step = 60 AND name = 'loss' ORDER BY attempt")
    assert [r["value"] for r in both] == [4.2, 4.158]
    journey = _sql(archive, "SELECT value FROM journey_metrics WHERE step = 60 AND name = 'loss'")
    assert [r["value"] for r in journey] == [4.158]


def test_skipped_and_nan_iterations_and_the_restart_are_events(archive):
    events = _sql(archive, "SELECT attempt, step, kind, details_json FROM events ORDER BY attempt, step")
    assert [(e["attempt"], e["step"], e["kind"]) for e in events] == [
        (0, 30, "skipped_iterations"), (0, 40, "nan"), (1, 60, "restart")]
    assert json.loads(events[0]["details_json"])["count"] == 2


def test_the_torn_last_line_is_skipped_and_said(tmp_path):
    summary = import_megatron(str(LOG), str(tmp_path / "a"), quiet=True)
    assert summary.skipped == {"torn last line": 1}
    assert "1 torn last line" in summary.line()


def test_importing_twice_adds_nothing_and_keeps_provenance(archive):
    before = _sql(archive, "SELECT count(*) AS n FROM metrics")[0]["n"]
    import_megatron(str(LOG), archive, quiet=True)
    assert _sql(archive, "SELECT count(*) AS n FROM metrics")[0]["n"] == before == 125
    assert _sql(archive, "SELECT count(*) AS n FROM events")[0]["n"] == 3
    config = json.loads(_sql(archive, "SELECT config_json FROM runs")[0]["config_json"])
    assert config["source"] == "megatron" and config["source_path"] == str(LOG)
    assert config["config"]["train_iters"] == 120


def test_a_damaged_line_is_one_error_naming_file_and_line(tmp_path, capsys):
    lines = LOG.read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace("lm loss: 7.000000E+00", "lm loss: 7.0000#0E+00")
    bad = tmp_path / "bad.log"
    bad.write_text("".join(lines))
    with pytest.raises(ImportSourceError, match=r"bad.log line 6: 'lm loss' is not a number"):
        read_megatron_log(str(bad))
    assert cli(["import", "megatron", str(bad), "--archive", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 6" in err


def test_a_file_without_training_lines_is_refused(tmp_path):
    other = tmp_path / "other.log"
    other.write_text("hello\nworld\n")
    assert not is_megatron_log(str(other)) and is_megatron_log(str(LOG))
    with pytest.raises(ImportSourceError, match="holds no Megatron-LM training log line"):
        read_megatron_log(str(other))


def test_older_logs_without_timestamps_or_grad_norm_import(tmp_path):
    old = tmp_path / "old.log"
    old.write_text(" iteration      100/  500000 | consumed samples:        51200 | elapsed time per iteration (ms): "
                   "812.3 | learning rate: 1.500E-04 | global batch size:   512 | lm loss: 7.923456E+00 | "
                   "loss scale: 262144.0 | number of skipped iterations:   0 | number of nan iterations:   0 |\n")
    run = read_megatron_log(str(old))
    got = dict(zip(run.metrics.column("name").to_pylist(), run.metrics.column("value").to_pylist(), strict=True))
    assert got["loss"] == 7.923456 and got["lr"] == 1.5e-4 and got["step_time_s"] == 0.8123
    assert run.status == "crashed" and run.metrics.column("wall_time").null_count == run.points


def test_a_log_whose_first_job_resumed_a_checkpoint_says_so_in_attempt_zero(tmp_path):
    log = tmp_path / "resumed.log"
    log.write_text(" successfully loaded checkpoint from /ckpt [ t 1/1, p 1/1 ] at iteration 5000\n"
                   " iteration     5010/   10000 | consumed samples: 160320 | elapsed time per iteration (ms): 900.0 |"
                   " learning rate: 1.000000E-04 | global batch size:    32 | lm loss: 2.000000E+00 |"
                   " loss scale: 1.0 | number of skipped iterations:   0 | number of nan iterations:   0 |\n")
    run = read_megatron_log(str(log))
    assert [(a["attempt"], a["resumed_from_step"]) for a in run.attempts] == [(0, 5000)]
    assert not [e for e in run.events if e["kind"] == "restart"]
