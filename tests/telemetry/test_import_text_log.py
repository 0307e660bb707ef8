"""`flightlog import log FILE --pattern REGEX`: any text log, one named group per metric; NaN/Inf kept, a
step going back is a restart (new attempt), a torn last line is skipped and said, mistakes are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.cli import main as cli
from telemetry import Archive
from telemetry.importers._common import ImportSourceError
from telemetry.importers.text_log import import_text_log, read_text_log

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "text_log" / "train.log"
PATTERN = (r"(?P<wall_time>\S+) step (?P<step>\d+) \| "
           r"(?:loss (?P<loss>\S+) \| lr (?P<lr>\S+)|eval: val loss (?P<val>\S+))")


def _sql(root: str, query: str) -> list[dict]:
    a = Archive(root)
    try:
        return a.sql(query).to_pylist()
    finally:
        a.close()


def test_a_one_line_pattern_imports_step_loss_and_lr():
    run = read_text_log(str(LOG), r"step (?P<step>\d+) \| loss (?P<loss>\S+) \| lr (?P<lr>\S+)")
    rows = run.metrics.to_pylist()
    assert rows[0] == {"step": 0, "name": "loss", "value": 3.0, "wall_time": None, "attempt": 0}
    assert run.points == 2 * 11  # 6 lines of the first attempt, 5 after the restart


def test_every_matched_group_is_a_point_with_nan_inf_and_wall_time(tmp_path):
    root = str(tmp_path / "a")
    import_text_log(str(LOG), root, pattern=PATTERN, quiet=True)
    rows = _sql(root, "SELECT attempt, step, name, value, wall_time FROM metrics ORDER BY attempt, step, name")
    got = {(r["attempt"], r["step"], r["name"]): r["value"] for r in rows}
    assert math.isnan(got[(0, 20, "loss")]) and got[(0, 30, "loss")] == math.inf
    assert got[(0, 40, "val")] == 2.95 and got[(0, 10, "lr")] == 5.5e-5
    assert rows[0]["wall_time"].isoformat() == "2024-05-01T12:00:00+00:00"
    assert len(rows) == 23


def test_a_step_going_back_is_a_restart(tmp_path):
    root = str(tmp_path / "a")
    import_text_log(str(LOG), root, pattern=PATTERN, quiet=True)
    attempts = _sql(root, "SELECT attempt, end_status FROM attempts ORDER BY attempt")
    assert attempts == [{"attempt": 0, "end_status": "crashed"}, {"attempt": 1, "end_status": "finished"}]
    assert _sql(root, "SELECT attempt, step, kind FROM events") == [{"attempt": 1, "step": 30, "kind": "restart"}]
    journey = _sql(root, "SELECT value FROM journey_metrics WHERE step = 40 AND name = 'loss'")
    assert [r["value"] for r in journey] == [2.5]  # the restarted attempt's value


def test_the_torn_last_line_and_unmatched_lines_are_counted(tmp_path):
    summary = import_text_log(str(LOG), str(tmp_path / "a"), pattern=PATTERN, quiet=True)
    assert summary.skipped == {"torn last line": 1, "lines not matching the pattern": 5, "empty lines": 1}


def test_importing_twice_adds_nothing_and_keeps_provenance(tmp_path):
    root = str(tmp_path / "a")
    import_text_log(str(LOG), root, pattern=PATTERN, quiet=True)
    import_text_log(str(LOG), root, pattern=PATTERN, quiet=True)
    assert _sql(root, "SELECT count(*) AS n FROM metrics")[0]["n"] == 23
    config = json.loads(_sql(root, "SELECT config_json FROM runs")[0]["config_json"])
    assert config["source"] == "log" and config["source_path"] == str(LOG) and config["config"]["pattern"] == PATTERN


@pytest.mark.parametrize("pattern, says", [
    (r"step (?P<step>\d+", "--pattern is not a valid regular expression"),
    (r"loss (?P<loss>\S+)", "--pattern has no (?P<step>...) group"),
    (r"step (?P<step>\d+)", "--pattern names no metric"),
])
def test_a_bad_pattern_is_one_clear_line(tmp_path, capsys, pattern, says):
    with pytest.raises(ImportSourceError, match=says.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
                       .replace(".", r"\.")):
        read_text_log(str(LOG), pattern)
    assert cli(["import", "log", str(LOG), "--pattern", pattern, "--archive", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_a_value_that_is_not_a_number_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.log"
    bad.write_text("step 1 | loss 2.5\nstep 2 | loss two\nstep 3 | loss 2.4\n")
    with pytest.raises(ImportSourceError, match=r"bad.log line 2: not a number: loss='two'"):
        read_text_log(str(bad), r"step (?P<step>\d+) \| loss (?P<loss>\S+)")


def test_cli_one_liner(tmp_path, capsys):
    argv = ["import", "log", str(LOG), "--pattern", r"step (?P<step>\d+) \| loss (?P<loss>\S+)",
            "--archive", str(tmp_path / "a"), "--quiet", "--run", "nano"]
    assert cli(argv) == 0
    assert capsys.readouterr().out.startswith("imported 1 log run(s) (nano): 11 points")
