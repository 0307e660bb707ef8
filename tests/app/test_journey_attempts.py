"""The journey page's attempts table: a Markdown table (no data grid to load on a first visit) that shows
every attempt with readable steps and times, and the user's own words escaped."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.ui import journey_data


def test_attempts_read_as_a_table_with_readable_steps_and_utc_times():
    attempts = pd.DataFrame({
        "attempt": np.array([0, 1], dtype="int32"), "first_step": np.array([0, 1_234_567]), "seed": [1234, 5678],
        "started_at": pd.to_datetime(["2026-01-01 00:00:00", "2026-01-02 01:02:03"], utc=True),
        "resumed_from_step": [float("nan"), 200.0], "reason": [None, "preempted"]})
    lines = journey_data.attempts_markdown(attempts).splitlines()
    assert lines[0] == r"| attempt | first step | seed | started \(UTC\) | resumed from step | reason |"
    assert lines[1] == "| --- | --- | --- | --- | --- | --- |"
    assert lines[2] == "| 0 | 0 | 1234 | 2026-01-01 00:00:00 |  |  |", "missing values are empty cells"
    assert lines[3] == "| 1 | 1,234,567 | 5678 | 2026-01-02 01:02:03 | 200 | preempted |"


def test_a_reason_cannot_break_the_table_or_inject_markup():
    attempts = pd.DataFrame({"attempt": [1], "reason": ["oom | *bold* $x$ :red[alarm] <b>hi</b>\nnext line"]})
    row = journey_data.attempts_markdown(attempts).splitlines()[2]
    assert row.count(" | ") == 1, "one cell separator: the reason's own | is escaped"
    for raw in ("*bold*", "$x$", ":red[", "<b>", "\n"):
        assert raw not in row


def test_the_journey_lists_both_attempts_of_a_restarted_run_and_the_one_of_a_run_never_restarted(open_app):
    at = open_app("views/journey.py", run="llm-demo")
    assert not at.exception, [e.value for e in at.exception]
    table = next(m.value for m in at.markdown if m.value.startswith("| attempt |"))
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| 0", "| 1"]
    assert "| 200 |" in rows[1], "attempt 1 resumed from step 200"
    assert not at.dataframe, "no data grid on the journey of a run without few-point series"
    at = open_app("views/journey.py", run="baseline")
    table = next(m.value for m in at.markdown if m.value.startswith("| attempt |"))
    assert len(table.splitlines()) == 3
