"""Bad input through telemetry.Writer, row validation and the importers: each value is stored
faithfully (read back through Archive) or refused with a one-line message, the good records
beside it are kept, and nothing is created outside the archive folder."""

from __future__ import annotations

import math
import os

import pytest

from data_schema.validation import SchemaError, validate_rows
from telemetry import Archive, Writer, WriterConfig
from telemetry.store.errors import ArchiveError

FAST = WriterConfig(flush_interval_s=0.1, close_timeout_s=10)
NAMES = ["", "x" * 10_000, "λόσς/ünï😀", "a/b", "a=b", "..", "../../etc", "nul\x00byte", "x'; DROP TABLE runs; --"]
RUN_NAMES = ["../../etc", "a/b", "C:\\x", "x'; DROP TABLE runs; --", "a=b", "nul\x00x", "", "x" * 10_000, "λ😀", ".."]


def tree(base) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), base) for d, dirs, files in os.walk(base) for n in dirs + files}


def outside(base, before: set[str]) -> set[str]:
    """What appeared next to the archive folder (everything must be under archive/)."""
    return {p for p in tree(base) - before if not p.startswith("archive")}


def test_odd_metric_names_and_special_values_round_trip(tmp_path):
    before = tree(tmp_path)
    url = str(tmp_path / "archive")
    with Writer(url, run="names", writer_config=FAST) as w:
        for i, name in enumerate(NAMES):
            w.metric(i, name, float(i))
        for step, value in ((100, math.nan), (101, math.inf), (102, -math.inf), (103, 2**70), (104, True)):
            w.metric(step, "special", value)
        for step in (-5, 3, 3, 1):  # negative, duplicated, decreasing: all data
            w.metric(step, "steps", float(step))
    got = Archive(url).sql("SELECT step, name, value FROM metrics ORDER BY name, step").to_pylist()
    by_name = {}
    for r in got:
        by_name.setdefault(r["name"], []).append((r["step"], r["value"]))
    for i, name in enumerate(NAMES):
        assert by_name[name] == [(i, float(i))], name
    special = dict(by_name["special"])
    assert math.isnan(special[100]) and special[101] == math.inf and special[102] == -math.inf
    assert special[103] == float(2**70) and special[104] == 1.0
    assert sorted(by_name["steps"]) == [(-5, -5.0), (1, 1.0), (3, 3.0), (3, 3.0)]
    assert outside(tmp_path, before) == set()


@pytest.mark.parametrize("run", RUN_NAMES, ids=range(len(RUN_NAMES)))
def test_hostile_run_names_stay_inside_the_archive_and_keep_their_name(tmp_path, run):
    before = tree(tmp_path)
    url = str(tmp_path / "archive")
    with Writer(url, run=run, writer_config=FAST) as w:
        w.metric(0, "loss", 1.0)
    a = Archive(url)
    rows = a.sql("SELECT run_id, name FROM runs").to_pylist()
    assert len(rows) == 1 and rows[0]["name"] == run  # the free-text name is kept as given
    run_id = rows[0]["run_id"]
    assert "/" not in run_id and "\\" not in run_id and ".." not in run_id and "\x00" not in run_id
    assert a.resolve_run(run) == run_id and a.metrics(run_id)["value"].tolist() == [1.0]
    assert outside(tmp_path, before) == set()


def _said(capfd, caplog) -> str:
    """What the writer told the user (a log line, or stderr when logging is not set up)."""
    return capfd.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)


def test_bad_rows_are_skipped_with_one_line_each_and_good_rows_kept(tmp_path, capfd, caplog):
    url = str(tmp_path / "archive")
    with Writer(url, run="rows", writer_config=FAST) as w:
        w.event("note", step=-1, message="nul\x00 and 😀", details={"nan": math.nan, "obj": object()})
        w.event(123)                                   # kind must be a string
        w.event("note", message="bad\ud800")          # not valid Unicode
        w.event("note", wall_time=1e20)               # outside the years 1-9999
        w.system("gpu.util", "abc")                    # text is not a number
        w.system("gpu.util", "1.5")                    # not guessed either
        w.system("", math.nan)                         # stored: empty name, NaN value
        w.row("no_such_table", a=1)
        w.row("evals", step=1, benchmark="b", metric="m", value=0.5, bogus=1)
        w.row("evals", step=2, benchmark="b", metric="m", value=2**1100)
        w.checkpoint(step=1, uri="../../etc/passwd", bytes=2**70)
        w.checkpoint(step=2, uri="../../etc/passwd")   # a URI is text: stored, never opened
        w.data_chunk(-1, first_step=5, last_step=1)    # odd but data
    err = _said(capfd, caplog)
    a = Archive(url)
    events = a.sql("SELECT kind, step, message, details_json FROM events WHERE kind = 'note'").to_pylist()
    assert len(events) == 1 and events[0]["message"] == "nul\x00 and 😀" and events[0]["step"] == -1
    assert '"nan": NaN' in events[0]["details_json"]
    system = a.sql("SELECT name, value FROM system").to_pylist()
    assert len(system) == 1 and system[0]["name"] == "" and math.isnan(system[0]["value"])
    assert a.sql("SELECT count(*) AS n FROM evals").to_pylist() == [{"n": 0}]
    assert a.sql("SELECT step, uri FROM checkpoints").to_pylist() == [{"step": 2, "uri": "../../etc/passwd"}]
    assert a.sql("SELECT chunk_id, first_step, last_step FROM data_chunks").to_pylist() == [
        {"chunk_id": -1, "first_step": 5, "last_step": 1}]
    assert not (tmp_path / "etc").exists()
    # one line per kind of problem and table (the writer does not flood the log)
    for says in ("column 'kind' must be a string", "column 'value' must be a number, got str 'abc'",
                 "unknown table 'no_such_table'",
                 "unknown column(s) ['bogus']", "outside the int64 range"):
        assert says in err, says
    assert "Traceback" not in err


@pytest.mark.parametrize("value, ok", [
    (math.nan, True), (math.inf, True), (-math.inf, True), (None, True), (True, True), (2**70, True),
    ("1.5", False), ("abc", False), (b"1", False), (2**1100, False), ([1.0], False), ({"a": 1}, False),
])
def test_float_columns_keep_numbers_and_refuse_text(value, ok):
    row = {"run_id": "r", "step": 1, "benchmark": "b", "metric": "m", "value": value}
    if ok:
        got = validate_rows("evals", [row])[0]["value"]
        assert (got is None and value is None) or (math.isnan(got) and math.isnan(value)) or got == float(value)
    else:
        with pytest.raises(SchemaError, match="column 'value'") as err:
            validate_rows("evals", [row])
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("step", [2**70, -(2**70), "7", 2.5, math.nan, True, [1]])
def test_integer_columns_refuse_what_is_not_a_whole_int64(step):
    row = {"run_id": "r", "attempt": 0, "rank": 0, "kind": "note", "wall_time": 1.0, "step": step}
    with pytest.raises(SchemaError, match="column 'step'") as err:
        validate_rows("events", [row])
    assert "\n" not in str(err.value)


# -- the metric hot path: one bad point must cost only that point ------------------------------
# telemetry/writer.py (not this suite's owner) loses the whole batch today; the patch is in
# .lock-additions/C-input-sandbox.writer.patch. Remove the xfail marks once it is applied.


@pytest.mark.parametrize("step, name, value, wall_time", [
    pytest.param(2**70, "m", 1.0, None, id="step-2**70"),
    pytest.param(None, "m", 1.0, None, id="step-None"),
    pytest.param(1, None, 1.0, None, id="name-None"),
    pytest.param(1, "bad\ud800", 1.0, None, id="name-surrogate"),
    pytest.param(1, "m", 1.0, math.nan, id="wall_time-nan"),
    pytest.param(1, "m", 1.0, 1e20, id="wall_time-1e20"),
    pytest.param("7", "m", 1.0, None, id="step-str"),
    pytest.param(1, 5, 1.0, None, id="name-int"),
    pytest.param(1, "m", "abc", None, id="value-str"),
    pytest.param(1, "m", 2**1100, None, id="value-2**1100"),
])
def test_an_invalid_metric_point_is_skipped_and_the_rest_of_the_batch_kept(tmp_path, capfd, caplog, step, name,
                                                                            value, wall_time):
    url = str(tmp_path / "archive")
    with Writer(url, run="hot", writer_config=FAST) as w:
        w.metric(0, "good", 1.0)
        if wall_time is None:
            w.metric(step, name, value)
        else:
            w.metric(step, name, value, wall_time=wall_time)
        w.metric(1, "good", 2.0)
    rows = Archive(url).sql("SELECT step, name, value FROM metrics ORDER BY step").to_pylist()
    assert rows == [{"step": 0, "name": "good", "value": 1.0}, {"step": 1, "name": "good", "value": 2.0}]
    assert "skipped an invalid metric point" in _said(capfd, caplog)


def test_writer_refuses_an_archive_path_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ArchiveError) as err:
        Writer(str(target), run="r", writer_config=FAST)
    assert "\n" not in str(err.value)
    assert target.read_text() == "x"
