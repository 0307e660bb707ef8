"""Hostile deep-link parameters and hostile SQL in the journey app (Streamlit AppTest): a warning or
an error message on the page, never an exception, and the app keeps serving."""

from __future__ import annotations

import os

import pytest
from sandbox_attacks import ATTACKS, expected

from app.ui import state

HOSTILE_RUNS = ["../../etc", "a/b", "C:\\x", "x'; DROP TABLE runs; --", "a=b", "", "x" * 10_000, "λ😀", ".."]
HOSTILE_STEPS = ["nan", "inf", "-inf", "1180591620717411303424", "1e400", "-1", "abc", "λ", "1/0", "' OR 1=1 --"]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.mark.parametrize("run", HOSTILE_RUNS, ids=range(len(HOSTILE_RUNS)))
def test_a_hostile_run_parameter_is_a_warning_and_another_run_is_shown(open_app, run):
    at = open_app("views/journey.py", run=run)
    assert not at.exception, [e.value for e in at.exception]
    if run:  # an empty ?run= is no choice at all
        assert "unknown run" in texts(at.warning)
    assert at.selectbox(key="run_select").value in {"llm-demo", "baseline", "empty-run"}


@pytest.mark.parametrize("value", HOSTILE_STEPS, ids=range(len(HOSTILE_STEPS)))
def test_a_hostile_step_range_is_ignored_with_a_note(open_app, value):
    at = open_app("views/journey.py", run="llm-demo", lo=value, hi=value)
    assert not at.exception, [e.value for e in at.exception]
    assert f"ignored lo={value!r}" in texts(at.warning)


@pytest.mark.parametrize("page", ["..", "../../etc", "sql'; --", "x" * 10_000])
def test_a_hostile_page_parameter_is_a_warning(open_app, page):
    at = open_app(None, page=page)
    assert not at.exception
    assert "ignored page=" in texts(at.warning)


def test_a_huge_whole_step_is_refused_not_passed_to_sql():
    lo, problem = state.parse_step("1180591620717411303424", "lo")
    assert lo is None and "ignored lo=" in problem


def test_every_attack_in_the_sql_console_shows_an_error_and_the_next_query_works(open_app, tmp_path):
    at = open_app("views/sql.py")
    at.number_input(key="sql_timeout").set_value(1).run()
    paths = {"root": str(tmp_path / "archive"), "outside": str(tmp_path), "out": str(tmp_path / "stolen")}
    (tmp_path / "secret.csv").write_text("password\nhunter2\n")
    failures = []
    for ident, sql, says in ATTACKS:
        at.text_area(key="sql_text").input(sql.format(**paths))
        at.button(key="sql_run").click().run()
        shown = texts(at.error)
        if at.exception or not any(piece in shown for piece in expected(says)) or "hunter2" in shown:
            failures.append(f"{ident}: {shown[:200]!r} {[e.value for e in at.exception]}")
        at.text_area(key="sql_text").input("SELECT count(DISTINCT run_id) AS n FROM metrics")
        at.button(key="sql_run").click().run()
        if at.exception or at.error or int(at.dataframe[0].value["n"][0]) != 2:
            failures.append(f"{ident}: the next good query failed")
    assert failures == []
    assert sorted(os.listdir(tmp_path)) == ["secret.csv"]
