"""`python -m app.ui.launch run app/ui/main.py ... -- --archive URL`: Streamlit, with the first visit's
server work done ahead (what `flightlog ui` starts, see server.py).

Streamlit runs the page scripts inside its server process, so without this the first visitor waits
for pandas, pyarrow, altair and duckdb to import (~0.8 s on a 2-core laptop), for the archive to open
and list its runs, and for the journey page's queries and charts (~1 s on a small archive, much more on a
live 1,024-rank one). A daemon thread does that (app/ui/warmup.py) while the server starts; a browser
arriving later finds it done, and one arriving earlier waits on the same import and cache locks. A failure
there is only logged at debug level: the page opens the archive again and shows the user what went wrong.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading

WARMUP_THREAD = "flightlog-warmup"
WARMUP_MODULE = "app.ui.warmup"  # imported on the warm-up thread (see warm_up)


# Streamlit notes it logs about a thread outside any session ("missing ScriptRunContext", "No runtime
# found" while the server is still starting): true of the warm-up thread by design, so not shown
QUIET_LOGGERS = ("streamlit.runtime.scriptrunner_utils.script_run_context", "streamlit.runtime.caching.cache_data_api")


class _FromWarmupThread(logging.Filter):
    """Drops the records of the warm-up thread (see QUIET_LOGGERS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != WARMUP_THREAD


def warm_up(script_args: list[str], runtime_wait_s: float | None = None) -> str:
    """Import the pages' modules and run `app.ui.warmup.warm_up` (open the archive, cache its runs list and
    the default run's journey).

    The import is by name, here on the warm-up thread, on purpose: importing the app's modules (pandas,
    altair, duckdb, Streamlit's caches) is most of the work being moved off the server's start, and a
    top-level import would do it on the main thread before the server answers, outside any runtime.
    """
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FromWarmupThread) for f in logger.filters):
            logger.addFilter(_FromWarmupThread())
    warmup = importlib.import_module(WARMUP_MODULE)
    if runtime_wait_s is None:
        return warmup.warm_up(script_args)
    return warmup.warm_up(script_args, runtime_wait_s)


def start_warm_up(argv: list[str]) -> threading.Thread:
    """Start `warm_up` in the background for a streamlit command line (`run SCRIPT ... -- SCRIPT_ARGS`)."""
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    thread = threading.Thread(target=warm_up, args=(script_args,), name=WARMUP_THREAD, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    start_warm_up(argv)
    from streamlit.web import cli  # lazy: the warm-up thread starts before Streamlit's own imports

    sys.argv = ["streamlit", *argv]  # what `python -m streamlit ...` would have seen
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
