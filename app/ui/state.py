"""Where the app's state comes from: the archive URL, the open Archive (cached), query results
(cached per archive version), and the deep-link query parameters (`?run=&page=&lo=&hi=`).

Pure helpers (argv and query-parameter parsing, step-range checks) are plain functions tested
without Streamlit; the `st.cache_*` wrappers keep one Archive per URL and one result per
(URL, archive version, query), so a new segment in the archive is a new cache key, never a
stale chart.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from telemetry.maintain.wired import open_live_archive
from telemetry.read import queries
from telemetry.read.sandbox import SandboxedQuery
from telemetry.store.errors import ArchiveError
from telemetry.store.fs import DEFAULT_ARCHIVE, default_archive_url  # noqa: F401 - DEFAULT_ARCHIVE: for callers

REFRESH_EVERY_S = 15.0  # re-scan the archive at most this often (live runs add segments)
# live view (`?refresh=N` or the sidebar): re-scan every N seconds and redraw when the archive changed
REFRESH_CHOICES: tuple[int, ...] = (0, 2, 5, 15, 60)  # 0 = off

# (file under app/ui/, title, url path, icon): the order of the navigation.
PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("views/runs.py", "Runs", "runs", ":material/list:"),
    ("views/journey.py", "Journey", "journey", ":material/show_chart:"),
    ("views/incidents.py", "Incidents", "incidents", ":material/warning:"),
    ("views/ranks.py", "Ranks & GPUs", "ranks", ":material/memory:"),
    ("views/checkpoints.py", "Checkpoints & data", "checkpoints", ":material/save:"),
    ("views/compare.py", "Compare", "compare", ":material/compare_arrows:"),
    ("views/sql.py", "SQL", "sql", ":material/terminal:"),
)
PAGE_PATHS = {url: path for path, _title, url, _icon in PAGES}


# -- pure helpers --------------------------------------------------------------------------
def archive_url_from_argv(argv: Sequence[str]) -> str | None:
    """The value of `--archive URL` or `--archive=URL` in argv, if any."""
    for i, arg in enumerate(argv):
        if arg == "--archive" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--archive="):
            return arg.split("=", 1)[1]
    return None


def configured_archive_url(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> str:
    """`--archive` from the command line, else $FLIGHTLOG_ARCHIVE, else ./flightlog-archive (store.fs's rule)."""
    from_argv = archive_url_from_argv(sys.argv[1:] if argv is None else argv)
    return from_argv or default_archive_url(env)


def parse_step(raw: Any, label: str) -> tuple[int | None, str | None]:
    """A query-parameter step -> (step, None), or (None, problem) for anything not a whole number >= 0."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, None
    try:
        value = float(str(raw).strip())
    except ValueError:
        return None, f"ignored {label}={raw!r}: not a step number"
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None, f"ignored {label}={raw!r}: a step is a whole number >= 0"
    if value >= 2**63:  # past int64: no step can be there, and SQL parameters would overflow
        return None, f"ignored {label}={raw!r:.40}: larger than any step"
    return int(value), None


def parse_refresh(raw: Any) -> tuple[int, str | None]:
    """`?refresh=N` -> (seconds, None); 0 means off; a bad value is (0, why it was ignored).
    Seconds are rounded to whole seconds, at least 1 (never faster than every second)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return 0, None
    try:
        value = float(str(raw).strip())
    except ValueError:
        return 0, f"ignored refresh={raw!r}: give a number of seconds (e.g. refresh=5), or 0 for off"
    if value != value or value < 0 or value == float("inf"):
        return 0, f"ignored refresh={raw!r}: give a number of seconds >= 1, or 0 for off"
    if value == 0:
        return 0, None
    return max(1, int(round(value))), None


@dataclass(slots=True)
class StepRange:
    lo: int | None = None
    hi: int | None = None
    problems: list[str] = field(default_factory=list)


def parse_step_range(lo_raw: Any, hi_raw: Any) -> StepRange:
    """`?lo=&hi=` -> a StepRange; bad values are dropped with a note, a reversed range is swapped."""
    lo, p1 = parse_step(lo_raw, "lo")
    hi, p2 = parse_step(hi_raw, "hi")
    problems = [p for p in (p1, p2) if p]
    if lo is not None and hi is not None and hi < lo:
        problems.append(f"lo={lo} is above hi={hi}: swapped them")
        lo, hi = hi, lo
    return StepRange(lo, hi, problems)


def clamp_range(lo: int | None, hi: int | None, first: int, last: int) -> tuple[int, int]:
    """A zoom range inside the run's [first, last] steps (None means the run's own end)."""
    lo = first if lo is None else min(max(int(lo), first), last)
    hi = last if hi is None else min(max(int(hi), first), last)
    return (lo, hi) if lo <= hi else (hi, lo)


def brushed_range(chart_state: Any, name: str) -> tuple[int, int] | None:
    """The step range of an Altair x-interval selection `name` in a chart's selection state, if any."""
    try:
        picked = chart_state["selection"][name]["x"]
        lo, hi = float(min(picked)), float(max(picked))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not (lo == lo and hi == hi):  # NaN
        return None
    return int(round(lo)), int(round(hi))


def page_link_url(page: str, **params: Any) -> str:
    """A relative deep link into a page (`?page=journey&run=...`), usable from any page's URL."""
    query = {"page": page, **{k: v for k, v in params.items() if v is not None}}
    return "./?" + urlencode(query)


# -- the archive (Streamlit caches) ----------------------------------------------------------
@st.cache_resource(show_spinner="Opening the archive...", max_entries=8)
def _open_archive(url: str) -> Any:
    # the live view: staged batches of running writers are shown too (telemetry.read.live)
    archive = open_live_archive(url)
    archive._ui_refreshed_at = time.monotonic()  # noqa: SLF001 - our own bookkeeping on the cached object
    return archive


def get_archive(url: str, refresh_s: float | None = None) -> Any:
    """The Archive at `url` (one per URL and process), re-scanned at most every `refresh_s` seconds
    (the live view's interval) or REFRESH_EVERY_S. A re-scan lists files; only new ones are read."""
    archive = _open_archive(url)
    every = refresh_s if refresh_s else REFRESH_EVERY_S
    if time.monotonic() - getattr(archive, "_ui_refreshed_at", 0.0) >= every:
        archive._ui_refreshed_at = time.monotonic()
        try:
            archive.refresh()
        except (ArchiveError, OSError) as exc:  # a flaky remote keeps showing what was read
            archive.problems.append(f"refresh failed: {exc}")
    return archive


def forget_archive(url: str) -> None:
    """Drop a cached Archive (after a failed open the user may fix the URL and retry)."""
    _open_archive.clear(url)


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_call(_archive: Any, url: str, version: str, method: str, args: tuple, kwargs: tuple) -> Any:
    del url, version  # the cache key (an underscored argument is not hashed): a new segment is a new key
    return getattr(_archive, method)(*args, **dict(kwargs))


def query(archive: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """`archive.<method>(*args, **kwargs)`, cached per (archive URL, archive version, arguments)."""
    return _cached_call(archive, archive.url, archive.version, method, tuple(args), tuple(sorted(kwargs.items())))


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_sql(_archive: Any, url: str, version: str, sql: str, params: tuple) -> pd.DataFrame:
    del url, version
    return _archive.sql(sql, list(params) or None).to_pandas()


def sql_df(archive: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    """A trusted query of the app itself (not the console), as a DataFrame, cached per archive version."""
    return _cached_sql(archive, archive.url, archive.version, sql, tuple(params))


@st.cache_resource(max_entries=16)
def sandbox(url: str, row_limit: int, timeout_s: float) -> Any:
    """The SQL console's SandboxedQuery over the archive at `url` (it follows the archive's refreshes)."""
    return SandboxedQuery(_open_archive(url), row_limit=row_limit, timeout_s=timeout_s)


# -- queries the pages share (telemetry.read.queries), cached like Archive methods ----------------
@st.cache_data(show_spinner=False, max_entries=256)
def _cached_read(_archive: Any, url: str, version: str, function: str, args: tuple, kwargs: tuple) -> Any:
    del url, version  # the cache key, as in _cached_call
    return getattr(queries, function)(_archive, *args, **dict(kwargs))


def _read(archive: Any, function: str, *args: Any, **kwargs: Any) -> Any:
    """`telemetry.read.queries.<function>(archive, ...)`, cached per (archive URL, archive version, arguments)."""
    return _cached_read(archive, archive.url, archive.version, function, tuple(args), tuple(sorted(kwargs.items())))


def attempt_curves(archive: Any, run_id: str, name: str, *, buckets: int = 600) -> pd.DataFrame:
    """One curve per attempt over the whole run (the lineage chart): queries.attempt_curves."""
    return _read(archive, "attempt_curves", run_id, name, buckets=buckets)


def step_spans(archive: Any, run_id: str) -> dict[int, tuple[int, int]]:
    """{attempt: (first step, last step)} of a run's metrics (Archive.attempt_spans: footer statistics
    when the files have them, no scan)."""
    return {int(a): (int(lo), int(hi)) for a, (lo, hi) in query(archive, "attempt_spans", run_id).items()}


def step_time_heatmap(archive: Any, run_id: str, *, buckets: int = 120) -> pd.DataFrame:
    """Mean step_time_s per (rank, step bucket) over the journey: queries.step_time_heatmap."""
    return _read(archive, "step_time_heatmap", run_id, buckets=buckets)


def rank_step_times(archive: Any, run_id: str) -> pd.DataFrame:
    """Per rank: median and p95 step_time_s and steps logged: queries.rank_step_times."""
    return _read(archive, "rank_step_times", run_id)


def system_names(archive: Any, run_id: str) -> list[str]:
    return _read(archive, "system_names", run_id)


def system_heatmap(archive: Any, run_id: str, name: str, *, buckets: int = 120) -> pd.DataFrame:
    """Mean of one system metric per (rank, wall-time bucket): queries.system_heatmap."""
    return _read(archive, "system_heatmap", run_id, name, buckets=buckets)


def metric_points(archive: Any, run_id: str) -> pd.DataFrame:
    """Per metric: points, first and last step, last value of the few-point ones: queries.metric_points."""
    return _read(archive, "metric_points", run_id)


def system_summary(archive: Any, run_id: str) -> pd.DataFrame:
    """Per rank: mean GPU util and power, max temperature and memory: queries.system_summary."""
    return _read(archive, "system_summary", run_id)


def x_bounds_for_steps(archive: Any, run_id: str, x: str, lo: int, hi: int) -> tuple[Any, Any]:
    """A step range in the units of x (tokens or time): queries.x_bounds_for_steps."""
    return _read(archive, "x_bounds_for_steps", run_id, x, lo, hi)


def default_run(runs: pd.DataFrame) -> str | None:
    """The run the sidebar opens on without `?run=`: the newest run that has a journey (metric points),
    else the newest run; None for an archive without runs. `runs` is Archive.runs() (newest first)."""
    if runs.empty:
        return None
    with_points = list(runs.loc[runs["steps"].notna(), "run_id"])
    return (with_points or list(runs["run_id"]))[0]


# -- page plumbing ---------------------------------------------------------------------------
def current_archive() -> Any:
    """The archive chosen in the sidebar, or None (main.py already showed why it could not open)."""
    return st.session_state.get("_archive")


def current_run() -> str | None:
    """The run chosen in the sidebar or by `?run=` (a run_id), None when the archive has no runs."""
    return st.session_state.get("_run_id")


def zoom_from_params() -> StepRange:
    """`?lo=&hi=` of this page view, checked (bad values are reported once on the page)."""
    return parse_step_range(st.query_params.get("lo"), st.query_params.get("hi"))


def require_run() -> tuple[Any, str] | None:
    """(archive, run_id) for a page about one run, or None after showing what to do instead."""
    archive = current_archive()
    if archive is None:
        st.info("No archive is open: fix the archive path or URL in the sidebar.")
        return None
    run_id = current_run()
    if run_id is None:
        st.info("This archive holds no runs yet. Record one with `trainer_hooks.attach(...)` or "
                "`flightlog demo`, or import one with `flightlog import`.")
        return None
    return archive, run_id


def show_error(exc: BaseException, what: str) -> None:
    """A user-facing error: what failed and the archive's own message, never a traceback."""
    st.error(f"{what}: {exc}", icon=":material/error:")
