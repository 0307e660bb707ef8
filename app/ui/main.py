"""Entry of the journey app: `streamlit run app/ui/main.py -- --archive URL` (or `flightlog ui URL`).

Lays out the sidebar shared by every page (archive, run), honours deep links
(`?page=journey&run=...&lo=..&hi=..`) and runs the chosen page; an ArchiveError anywhere
becomes a message on the page, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.ui import state
from telemetry.store.errors import ArchiveError

HERE = Path(__file__).parent

st.set_page_config(page_title="flightlog", page_icon=":material/flight_takeoff:", layout="wide")
# a laptop screen (1440x900) shows the first charts without scrolling: less empty space above the title
st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem;padding-bottom:2rem}</style>")

pages = {url: st.Page(str(HERE / path), title=title, url_path=url, icon=icon, default=(url == "runs"))
         for path, title, url, icon in state.PAGES}
page = st.navigation(list(pages.values()))

# `?page=journey` deep links work from any URL: move to that page, keeping the other parameters
wanted = st.query_params.get("page")
if wanted:
    rest = {k: v for k, v in st.query_params.to_dict().items() if k != "page"}
    if wanted in pages and pages[wanted].url_path != page.url_path:
        st.switch_page(pages[wanted], query_params=rest)
    del st.query_params["page"]
    if wanted not in pages:
        st.warning(f"ignored page={wanted!r}: pages are {', '.join(pages)}")


def _refresh_control() -> int:
    """The live view's interval in seconds (0 = off): `?refresh=N` sets it, the sidebar changes it."""
    wanted, problem = state.parse_refresh(st.query_params.get("refresh"))
    if problem:
        st.warning(problem)
        st.query_params.pop("refresh", None)
    choices = sorted(set(state.REFRESH_CHOICES) | {wanted})
    if "refresh_select" not in st.session_state or (
            "refresh" in st.query_params and st.session_state.get("_refresh_param") != wanted):
        st.session_state["refresh_select"] = wanted  # a new ?refresh= wins over the last choice
    st.session_state["_refresh_param"] = wanted
    seconds = st.selectbox("Live refresh", choices, key="refresh_select",
                           format_func=lambda s: "off" if s == 0 else f"every {s} s",
                           help="While a run is training: re-read the archive (staged data included) this often")
    if seconds:
        st.query_params["refresh"] = str(seconds)  # a deep link keeps the live view
    else:
        st.query_params.pop("refresh", None)
    return int(seconds)


def _sidebar() -> None:
    """Archive and run pickers; they set st.session_state['_archive'] and ['_run_id']."""
    st.session_state["_archive"] = None
    st.session_state["_run_id"] = None
    st.session_state["_archive_error"] = None
    configured = state.configured_archive_url()
    with st.sidebar:
        url = st.text_input("Archive", value=configured, key="archive_url",
                            help="A folder, or an s3://, gs://, hf:// or http(s):// URL of a published archive")
        url = (url or "").strip() or configured
        refresh_s = _refresh_control()
        st.session_state["_refresh_s"] = refresh_s
        try:
            archive = state.get_archive(url, refresh_s)
        except ArchiveError as exc:
            state.forget_archive(url)
            st.session_state["_archive_error"] = f"Cannot open this archive: {exc}"
            st.error("The archive could not be opened (details on the page).")
            return
        except Exception as exc:  # noqa: BLE001 - any failure to open a user's URL is their input, not a crash
            state.forget_archive(url)
            st.session_state["_archive_error"] = (
                f"Cannot open archive {url!r}: {type(exc).__name__}: {exc}. "
                "Check the path or URL (a folder written by flightlog, or a published archive URL).")
            st.error("The archive could not be opened (details on the page).")
            return
        st.session_state["_archive"] = archive
        runs = state.query(archive, "runs")
        if runs.empty:
            return
        ids = list(runs["run_id"])
        names = dict(zip(runs["run_id"], runs["name"].fillna(runs["run_id"]), strict=True))
        wanted_run = st.query_params.get("run")
        if wanted_run and st.session_state.get("run_select") != wanted_run:
            try:
                resolved = archive.resolve_run(wanted_run)
                st.session_state["run_select"] = resolved
            except ArchiveError as exc:
                st.warning(f"{exc}. Showing another run instead.")
                st.query_params.pop("run", None)
        if st.session_state.get("run_select") not in ids:
            st.session_state["run_select"] = state.default_run(runs)  # the newest run that has a journey
        run_id = st.selectbox("Run", ids, key="run_select",
                              format_func=lambda r: names[r] if names[r] == r else f"{names[r]} ({r})")
        st.session_state["_run_id"] = run_id
        st.query_params["run"] = run_id  # the URL is always a deep link to what is shown
        with st.expander("Archive details"):
            st.caption(f"{len(runs)} runs · version {archive.version}")
            for problem in archive.problems:
                st.warning(problem)
            if st.button("Re-scan the archive", help="pick up new segments of a live run now"):
                archive.refresh()
                st.rerun()


_sidebar()


def _live_watch(archive, version: str) -> None:
    """Every interval: re-scan (only new files are read); redraw the whole page when something changed."""
    state.get_archive(archive.url, st.session_state.get("_refresh_s"))
    if archive.version != version:
        st.rerun(scope="app")


if st.session_state["_archive"] is not None and st.session_state.get("_refresh_s"):
    _archive = st.session_state["_archive"]
    st.fragment(_live_watch, run_every=st.session_state["_refresh_s"])(_archive, _archive.version)
if st.session_state["_archive_error"]:
    st.error(st.session_state["_archive_error"], icon=":material/error:")
try:
    page.run()
except ArchiveError as exc:
    st.error(f"{exc}")
