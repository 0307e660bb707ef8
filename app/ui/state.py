"""Where the app's state comes from: the archive URL, the open Archive (cached), query results
(cached per archive version), and the deep-link query parameters (`?run=&page=&lo=&hi=`).

Pure helpers (argv and query-parameter parsing, step-range checks) are plain functions tested
without Streamlit; the `st.cache_*` wrappers keep one Archive per URL and one result per
(URL, archive version, query), so a new segment in the archive is a new cache key, never a
stale chart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st

from telemetry.store.errors import ArchiveError

ARCHIVE_ENV = "FLIGHTLOG_ARCHIVE"
DEFAULT_ARCHIVE = "./flightlog-archive"
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
    """`--archive` from the command line, else $FLIGHTLOG_ARCHIVE, else ./flightlog-archive."""
    import sys

    from_argv = archive_url_from_argv(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    return from_argv or env.get(ARCHIVE_ENV) or DEFAULT_ARCHIVE


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
    from urllib.parse import urlencode

    query = {"page": page, **{k: v for k, v in params.items() if v is not None}}
    return "./?" + urlencode(query)


# -- the archive (Streamlit caches) ----------------------------------------------------------
@st.cache_resource(show_spinner="Opening the archive...", max_entries=8)
def _open_archive(url: str) -> Any:
    # the live view: staged batches of running writers are shown too (telemetry.read.live)
    from telemetry.maintain.wired import open_live_archive

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
    from telemetry.read.sandbox import SandboxedQuery

    return SandboxedQuery(_open_archive(url), row_limit=row_limit, timeout_s=timeout_s)


# -- queries the pages share (trusted SQL over the archive's views) --------------------------
def attempt_curves(archive: Any, run_id: str, name: str, *, buckets: int = 600) -> pd.DataFrame:
    """One min/max/mean curve per attempt over the whole run (journey=False): the lineage chart.

    Buckets are shared by every attempt (same step grid), so attempts overlay exactly.
    """
    span = sql_df(archive, "SELECT min(step) AS lo, max(step) AS hi FROM metrics WHERE run_id = ? AND name = ?",
                  (run_id, name))
    if span.empty or pd.isna(span["lo"].iloc[0]):
        return pd.DataFrame(columns=["attempt", "bucket", "x_lo", "x_hi", "min", "max", "mean", "count"])
    lo, hi = int(span["lo"].iloc[0]), int(span["hi"].iloc[0])
    width = hi - lo + 1
    return sql_df(archive, f"""
SELECT attempt, (step - {lo}) * {int(buckets)} // {width} AS bucket, min(step) AS x_lo, max(step) AS x_hi,
       min(value) FILTER (WHERE isfinite(value)) AS "min", max(value) FILTER (WHERE isfinite(value)) AS "max",
       avg(value) FILTER (WHERE isfinite(value)) AS mean, count(*) AS count,
       count(*) FILTER (WHERE NOT isfinite(value)) AS nonfinite
FROM metrics WHERE run_id = ? AND name = ?
GROUP BY attempt, bucket ORDER BY attempt, bucket""", (run_id, name))


def step_spans(archive: Any, run_id: str) -> dict[int, tuple[int, int]]:
    """{attempt: (first step, last step)} of a run's metrics: footer statistics when the archive has
    them (Archive.attempt_spans, no scan), else the lineage query."""
    if hasattr(archive, "attempt_spans"):
        return {int(a): (int(lo), int(hi)) for a, (lo, hi) in query(archive, "attempt_spans", run_id).items()}
    lineage = query(archive, "attempt_lineage", run_id).dropna(subset=["first_step", "last_step"])
    return {int(r.attempt): (int(r.first_step), int(r.last_step)) for r in lineage.itertuples()}


def step_time_heatmap(archive: Any, run_id: str, *, buckets: int = 120) -> pd.DataFrame:
    """Mean step_time_s per (rank, step bucket) over the journey: rank, bucket, x_lo, x_hi, value."""
    span = sql_df(archive, "SELECT min(step) AS lo, max(step) AS hi FROM metrics WHERE run_id = ? AND name = 'step_time_s'",
                  (run_id,))
    if span.empty or pd.isna(span["lo"].iloc[0]):
        return pd.DataFrame(columns=["rank", "bucket", "x_lo", "x_hi", "value"])
    lo, hi = int(span["lo"].iloc[0]), int(span["hi"].iloc[0])
    return sql_df(archive, f"""
SELECT rank, (step - {lo}) * {int(buckets)} // {hi - lo + 1} AS bucket, min(step) AS x_lo, max(step) AS x_hi,
       avg(value) FILTER (WHERE isfinite(value)) AS value
FROM journey_metrics WHERE run_id = ? AND name = 'step_time_s'
GROUP BY rank, bucket ORDER BY rank, bucket""", (run_id,))


def rank_step_times(archive: Any, run_id: str) -> pd.DataFrame:
    """Per rank: median and p95 step_time_s over the journey, and how many steps it logged."""
    return sql_df(archive, """
SELECT rank, median(value) AS median_step_time_s, quantile_cont(value, 0.95) AS p95_step_time_s, count(*) AS steps
FROM journey_metrics WHERE run_id = ? AND name = 'step_time_s' AND isfinite(value)
GROUP BY rank ORDER BY rank""", (run_id,))


def system_names(archive: Any, run_id: str) -> list[str]:
    df = sql_df(archive, "SELECT DISTINCT name FROM system WHERE run_id = ? ORDER BY name", (run_id,))
    return list(df["name"])


def system_heatmap(archive: Any, run_id: str, name: str, *, buckets: int = 120) -> pd.DataFrame:
    """Mean of one system metric per (rank, wall-time bucket): rank, bucket, t_lo, t_hi, value."""
    span = sql_df(archive, """
SELECT epoch_us(min(wall_time)) AS lo, epoch_us(max(wall_time)) AS hi FROM system WHERE run_id = ? AND name = ?""",
                  (run_id, name))
    if span.empty or pd.isna(span["lo"].iloc[0]):
        return pd.DataFrame(columns=["rank", "bucket", "t_lo", "t_hi", "value"])
    lo, hi = int(span["lo"].iloc[0]), int(span["hi"].iloc[0])
    return sql_df(archive, f"""
SELECT rank, (epoch_us(wall_time) - {lo}) * {int(buckets)} // {hi - lo + 1} AS bucket,
       min(wall_time) AS t_lo, max(wall_time) AS t_hi, avg(value) FILTER (WHERE isfinite(value)) AS value
FROM system WHERE run_id = ? AND name = ?
GROUP BY rank, bucket ORDER BY rank, bucket""", (run_id, name))


def system_summary(archive: Any, run_id: str) -> pd.DataFrame:
    """Per rank: mean GPU util and power, max temperature and memory (wide, one row per rank)."""
    return sql_df(archive, """
SELECT rank, any_value(host) AS host, any_value(gpu_uuid) AS gpu_uuid,
       avg(value) FILTER (WHERE name = 'gpu.util') AS mean_util_pct,
       avg(value) FILTER (WHERE name = 'gpu.power_w') AS mean_power_w,
       max(value) FILTER (WHERE name = 'gpu.temp_c') AS max_temp_c,
       max(value) FILTER (WHERE name = 'gpu.mem_used_bytes') / 1e9 AS max_mem_gb
FROM system WHERE run_id = ? GROUP BY rank ORDER BY rank""", (run_id,))


def x_bounds_for_steps(archive: Any, run_id: str, x: str, lo: int, hi: int) -> tuple[Any, Any]:
    """A step range in the units of x: tokens_seen (tokens) or wall_time (time) at those steps."""
    if x == "step":
        return lo, hi
    if x == "tokens":
        df = sql_df(archive, """
SELECT min(value) AS lo, max(value) AS hi FROM journey_metrics
WHERE run_id = ? AND name = 'tokens_seen' AND step BETWEEN ? AND ? AND isfinite(value)""", (run_id, lo, hi))
    else:
        df = sql_df(archive, "SELECT min(wall_time) AS lo, max(wall_time) AS hi FROM journey_metrics "
                    "WHERE run_id = ? AND step BETWEEN ? AND ?", (run_id, lo, hi))
    if df.empty or pd.isna(df["lo"].iloc[0]):
        return None, None
    return df["lo"].iloc[0], df["hi"].iloc[0]


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
