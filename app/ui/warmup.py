"""The first visit's server work, done ahead by `flightlog ui` (see launch.py): open the sidebar's
default archive and cache its runs list, so the first visitor finds both ready.

Importing this module is itself part of the work (pandas, altair, duckdb and the app's own modules):
launch.py imports it on its warm-up thread, never on the thread that starts the server.
"""

from __future__ import annotations

import logging
import time

import altair  # noqa: F401 - importing is the warm-up: every page draws with altair
import duckdb  # noqa: F401 - the archive's engine
import pandas  # noqa: F401
import pyarrow  # noqa: F401
from streamlit import runtime

from app.ui import charts, state  # noqa: F401 - charts: the chart builders every page uses

log = logging.getLogger(__name__)
RUNTIME_WAIT_S = 60.0  # Streamlit's runtime (the home of st.cache_data) exists within a second or two


def warm_up(script_args: list[str], runtime_wait_s: float = RUNTIME_WAIT_S) -> str:
    """Open the `--archive` of the app's `script_args` (st.cache_resource) and cache its runs list the
    way the sidebar asks for it (st.cache_data, once Streamlit's runtime exists).

    Returns how far it got: "failed" (the archive did not open), "opened" (no runtime to cache the runs
    in within `runtime_wait_s`) or "ready". A failure is only logged at debug level: the page opens the
    archive again and shows the user what went wrong.
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
    try:
        state.query(archive, "runs")
    except Exception as exc:  # noqa: BLE001 - same: the sidebar runs this query again and reports
        log.debug("warm-up could not list the runs: %s", exc)
        return "opened"
    return "ready"
