"""The journey app in real headless Chromium: `flightlog ui` (app.ui.server.serve) on a free
loopback port, each page opened by URL, charts drawn by Vega, no exception box, a screenshot per
page in test-artifacts/screenshots/ (1440x900, a laptop screen). One test reads the archive over
http (python -m http.server, read-only, manifest-based)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.ui.server import stop

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-artifacts" / "screenshots"
# url path -> (charts the page draws for the demo run, text its title starts with)
PAGES = {  # "" is the default page (Runs): st.navigation serves it at the root
    "": (0, "Runs"), "journey": (5, "Journey of llm-demo"), "incidents": (1, "Incidents"),
    "ranks": (2, "Ranks & GPUs"), "checkpoints": (3, "Checkpoints & data"), "compare": (1, "Compare runs"),
    "sql": (0, "SQL"),
}

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"headless Chromium tests need {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def load_fixture_builder():
    spec = importlib.util.spec_from_file_location("flightlog_app_fixture", REPO / "tests" / "app" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_fixture_archive


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory) -> str:
    return load_fixture_builder()(tmp_path_factory.mktemp("browser") / "archive")


class App:
    """A running `flightlog ui` (streamlit child process) on a loopback port."""

    def __init__(self, archive_url: str):
        from app.ui.server import serve

        self.port = free_port()
        self.proc = serve(archive_url, port=self.port, block=False, address="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(self.base + "/_stcore/health", proc=self.proc)

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def app(demo_archive):
    server = App(demo_archive)
    yield server
    server.stop()


def make_driver(tmp: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp}", "--window-size=1440,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = make_driver(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_until_idle(driver, *, charts: int, timeout: float = 60.0) -> None:
    """Until the app is mounted with the page's title, no script run is in progress (status widget
    gone, three polls in a row) and at least `charts` Vega charts have drawn a canvas or SVG."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        mounted = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]')
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        drawn = driver.find_elements(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg.marks")
        skeleton = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSkeleton"]')
        titled = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h1')
        quiet = quiet + 1 if mounted and titled and not running and not skeleton and len(drawn) >= charts else 0
        if quiet >= 3:
            return
        time.sleep(0.2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "timeout.png"))
    raise TimeoutError(f"app not idle with {charts} charts after {timeout:.0f} s "
                       f"({len(driver.find_elements(By.CSS_SELECTOR, '.vega-embed'))} vega-embed found)")


def open_page(driver, url: str, *, charts: int) -> None:
    driver.get(url)
    wait_until_idle(driver, charts=charts)


def assert_no_exception(driver) -> None:
    from selenium.webdriver.common.by import By

    boxes = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not boxes, boxes[0].text if boxes else ""
    dialogs = [d.text for d in driver.find_elements(By.CSS_SELECTOR, '[role="dialog"]')]
    assert not any("Page not found" in d for d in dialogs), dialogs


def title_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "h1").text


@pytest.mark.parametrize("page", list(PAGES))
def test_each_page_renders_charts_in_chromium_without_an_exception(app, browser, page):
    charts, title = PAGES[page]
    open_page(browser, f"{app.base}/{page}?run=llm-demo", charts=charts)
    assert_no_exception(browser)
    assert title_text(browser).startswith(title)
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{page or 'runs'}.png"))


def test_sql_console_runs_a_query_and_charts_it_in_chromium(app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, f"{app.base}/sql?run=llm-demo", charts=0)
    area = browser.find_element(By.CSS_SELECTOR, '[data-testid="stTextArea"] textarea')
    area.send_keys(Keys.CONTROL, "a")
    area.send_keys(Keys.DELETE)
    area.send_keys("SELECT step, avg(value) AS loss FROM journey_metrics WHERE name = 'loss' "
                   "GROUP BY step ORDER BY step")
    area.send_keys(Keys.CONTROL, Keys.ENTER)
    wait_until_idle(browser, charts=0)
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button") if b.text == "Run query").click()
    wait_until_idle(browser, charts=1)
    assert_no_exception(browser)
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    assert "500 rows" in browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    browser.save_screenshot(str(SHOTS / "sql.png"))


def test_deep_link_with_bad_params_shows_warnings_in_chromium(app, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{app.base}/?page=journey&run=nope&lo=abc", charts=4)
    assert_no_exception(browser)
    alerts = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stAlert"]'))
    assert "unknown run 'nope'" in alerts and "ignored lo='abc'" in alerts
    browser.save_screenshot(str(SHOTS / "journey-bad-params.png"))


def test_journey_zoom_deep_link_in_chromium(app, browser):
    open_page(browser, f"{app.base}/journey?run=llm-demo&lo=120&hi=180", charts=4)
    assert_no_exception(browser)
    assert "lo=120" in browser.current_url and "hi=180" in browser.current_url
    browser.save_screenshot(str(SHOTS / "journey-zoomed.png"))


def test_an_archive_served_over_http_opens_in_chromium(demo_archive, browser, tmp_path):
    from telemetry.maintain.manifest import write_manifest

    root = tmp_path / "published"
    shutil.copytree(demo_archive, root, ignore=shutil.ignore_patterns("_staging"))
    write_manifest(str(root))
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_http(f"http://127.0.0.1:{port}/flightlog.json", proc=http)
        server = App(f"http://127.0.0.1:{port}")
        open_page(browser, f"{server.base}/journey?run=llm-demo", charts=5)
        assert_no_exception(browser)
        assert title_text(browser) == "Journey of llm-demo"
        browser.save_screenshot(str(SHOTS / "journey-http-archive.png"))
    finally:
        if server is not None:
            server.stop()
        stop(http)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_flightlog_ui_blocks_until_ctrl_c_or_kill_then_stops_streamlit(demo_archive, signame):
    """serve(block=True), as `flightlog ui` calls it: Ctrl-C (SIGINT) or SIGTERM ends it cleanly, and
    the streamlit child goes with it."""
    import signal

    port = free_port()
    code = f"import sys; from app.ui.server import serve; sys.exit(serve({demo_archive!r}, port={port}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc=proc)
        proc.send_signal(getattr(signal, signame))
        assert proc.wait(timeout=20) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        stop(proc)


def test_dragging_across_a_journey_chart_zooms_into_those_steps(app, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, f"{app.base}/journey?run=llm-demo", charts=4)
    canvas = browser.find_elements(By.CSS_SELECTOR, ".vega-embed")[0]
    width = canvas.size["width"]
    ActionChains(browser).move_to_element_with_offset(canvas, int(-width * 0.1), 0).click_and_hold() \
        .move_by_offset(int(width * 0.25), 0).release().perform()
    deadline = time.monotonic() + 30
    while "lo=" not in browser.current_url and time.monotonic() < deadline:
        time.sleep(0.2)
    wait_until_idle(browser, charts=4)
    assert_no_exception(browser)
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(browser.current_url).query)
    lo, hi = int(query["lo"][0]), int(query["hi"][0])
    assert 0 < lo < hi < 499 and hi - lo < 300
    browser.save_screenshot(str(SHOTS / "journey-brushed.png"))


# the box of every chart and of every column beside its own, as the page lays them out
OVERLAP_SCRIPT = """
const rect = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const out = [];
for (const chart of document.querySelectorAll('[data-testid="stMain"] .vega-embed')) {
  const drawn = chart.querySelector('canvas, svg.marks') || chart;
  const own = chart.closest('[data-testid="stColumn"]');
  if (!own) continue;
  out.push({chart: rect(drawn), own: rect(own), text: 'own column'});
  // every column the chart sits in (columns nest), against the columns beside it
  for (let col = own; col; col = col.parentElement.closest('[data-testid="stColumn"]')) {
    for (const other of col.parentElement.children) {
      if (other === col || !other.matches('[data-testid="stColumn"]')) continue;
      out.push({chart: rect(drawn), column: rect(other), text: other.innerText.slice(0, 40)});
    }
  }
}
return out;
"""


@pytest.mark.parametrize("width", [1280, 1440, 1920])
def test_incident_drilldown_charts_stay_inside_their_column(app, browser, width):
    browser.set_window_size(width, 900)
    try:
        open_page(browser, f"{app.base}/incidents?run=llm-demo", charts=6)
        assert_no_exception(browser)
        boxes = browser.execute_script(OVERLAP_SCRIPT)
        assert any(b["text"].startswith("Data") for b in boxes), "the drill-down's charts sit beside the Data column"
        for b in boxes:
            left, top, right, bottom = b["chart"]
            if "column" in b:  # no chart may reach into a neighbouring column (1 px of rounding allowed)
                c_left, c_top, c_right, c_bottom = b["column"]
                apart = right <= c_left + 1 or left >= c_right - 1 or bottom <= c_top + 1 or top >= c_bottom - 1
                assert apart, f"at {width} px a chart {b['chart']} overlaps the column {b['text']!r} {b['column']}"
            else:  # and its drawing stays within its own column
                o_left, _, o_right, _ = b["own"]
                assert left >= o_left - 1 and right <= o_right + 1, f"at {width} px a chart spills out: {b}"
        if width == 1440:  # the drill-down, scrolled into view, beside its Data column
            from selenium.webdriver.common.by import By

            heading = next(h for h in browser.find_elements(By.CSS_SELECTOR, "h3") if h.text.startswith("Drill-down"))
            browser.execute_script("arguments[0].scrollIntoView()", heading)
            time.sleep(0.5)
            browser.save_screenshot(str(SHOTS / "incidents-1440.png"))
    finally:
        browser.set_window_size(1440, 900)
