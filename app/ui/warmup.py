"""The first visit's server work, done ahead by `flightlog ui` (see launch.py): open the sidebar's default
archive, cache its runs list, then compute the journey page of the run the sidebar opens on (its default
view: every query and chart spec, app/ui/journey_data.py), so the first visitor finds all of it ready.

Importing this module is itself part of the work (pandas, altair, duckdb and the app's own modules):
launch.py imports it on its warm-up thread, never on the thread that starts the server.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import altair  # noqa: F401 - importing is the warm-up: every page draws with altair
import duckdb  # noqa: F401 - the archive's engine
import pandas  # noqa: F401
import pyarrow  # noqa: F401
from streamlit import runtime

from app.ui import charts, journey_data, state  # noqa: F401 - charts: the chart builders every page uses

log = logging.getLogger(__name__)
RUNTIME_WAIT_S = 60.0  # Streamlit's runtime (the home of st.cache_data) exists within a second or two


def warm_up(script_args: list[str], runtime_wait_s: float = RUNTIME_WAIT_S) -> str:
    """Open the `--archive` of the app's `script_args` (st.cache_resource), then, once Streamlit's runtime
    exists, cache its runs list the way the sidebar asks for it and the default run's journey (st.cache_data).

    Returns how far it got: "failed" (the archive did not open), "opened" (no runtime to cache in within
    `runtime_wait_s`, or the runs list failed), "listed" (runs cached; the journey failed) or "ready". A
    failure is only logged at debug level: the page runs the same queries again and shows what went wrong.
    """
    try:
        archive = state.get_archive(state.configured_archive_url(script_args))  # the sidebar's default archive
    except Exception as exc:  # noqa: BLE001 - the page reports a bad archive to the user; a warm-up only tries
        log.debug("warm-up could not open the archive: %s", exc)
        return "failed"
    deadline = time.monotonic() + runtime_wait_s
    while not runtime.exists():  # st.cache_data keeps its entries in the runtime: wait for it
        if time.monotonic() >= deadline:
            return "opened"
        time.sleep(0.05)
    return warm_pages(archive)


def warm_pages(archive: Any, run_id: str | None = None) -> str:
    """Cache what a first visit of `archive` asks for: the sidebar's runs list, then the journey of `run_id`
    (default: the run the sidebar opens on). Returns "opened", "listed" or "ready" (see warm_up)."""
    try:
        runs = state.query(archive, "runs")
    except Exception as exc:  # noqa: BLE001 - same: the sidebar runs this query again and reports
        log.debug("warm-up could not list the runs: %s", exc)
        return "opened"
    run_id = run_id or state.default_run(runs)
    if run_id is None:
        return "ready"
    try:
        journey_data.warm(archive, run_id)
    except Exception as exc:  # noqa: BLE001 - same: the journey page runs these queries again and reports
        log.debug("warm-up could not compute the journey of %s: %s", run_id, exc)
        return "listed"
    return "ready"
