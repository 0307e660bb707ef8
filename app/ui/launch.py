"""`python -m app.ui.launch run app/ui/main.py ... -- --archive URL`: Streamlit, with the first visit's
server work done ahead (what `flightlog ui` starts, see server.py).

Streamlit runs the page scripts inside its server process, so without this the first visitor waits
for pandas, pyarrow, altair and duckdb to import (~0.8 s on a 2-core laptop) and for the archive to
open and list its runs. A daemon thread does that while the server starts; a browser arriving later
finds it done, and one arriving earlier just waits on the same import locks. A failure here is
silent on purpose: the page opens the archive again and shows the user what went wrong.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

WARMUP_THREAD = "flightlog-warmup"
RUNTIME_WAIT_S = 60.0  # Streamlit's runtime (the home of st.cache_data) exists within a second or two


# Streamlit notes it logs about a thread outside any session ("missing ScriptRunContext", "No runtime
# found" while the server is still starting): true of the warm-up thread by design, so not shown
QUIET_LOGGERS = ("streamlit.runtime.scriptrunner_utils.script_run_context", "streamlit.runtime.caching.cache_data_api")


class _FromWarmupThread(logging.Filter):
    """Drops the records of the warm-up thread (see QUIET_LOGGERS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != WARMUP_THREAD


def warm_up(script_args: list[str], runtime_wait_s: float = RUNTIME_WAIT_S) -> str:
    """Import the pages' heavy modules, open the `--archive` of the app's `script_args` (st.cache_resource)
    and cache its runs list the way the sidebar asks for it (st.cache_data, once Streamlit's runtime exists).

    Returns how far it got: "failed" (the archive did not open), "opened" (no runtime to cache the runs
    in within `runtime_wait_s`) or "ready".
    """
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FromWarmupThread) for f in logger.filters):
            logger.addFilter(_FromWarmupThread())
    import altair  # noqa: F401 - importing is the warm-up
    import duckdb  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    from streamlit import runtime

    from app.ui import charts, state  # noqa: F401 - charts: altair's chart classes, used by every page

    try:
        archive = state.get_archive(state.configured_archive_url(script_args))  # the sidebar's default archive
    except Exception:  # noqa: BLE001 - the page reports a bad archive to the user; a warm-up only tries
        return "failed"
    deadline = time.monotonic() + runtime_wait_s
    while not runtime.exists():  # st.cache_data keeps its entries in the runtime: wait for it
        if time.monotonic() >= deadline:
            return "opened"
        time.sleep(0.05)
    try:
        state.query(archive, "runs")
    except Exception:  # noqa: BLE001 - same: the sidebar runs this query again and reports
        return "opened"
    return "ready"


def start_warm_up(argv: list[str]) -> threading.Thread:
    """Start `warm_up` in the background for a streamlit command line (`run SCRIPT ... -- SCRIPT_ARGS`)."""
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    thread = threading.Thread(target=warm_up, args=(script_args,), name=WARMUP_THREAD, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    start_warm_up(argv)
    from streamlit.web import cli

    sys.argv = ["streamlit", *argv]  # what `python -m streamlit ...` would have seen
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
