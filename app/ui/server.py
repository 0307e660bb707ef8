"""Start the journey app: `python -m streamlit run app/ui/main.py -- --archive URL` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import webbrowser
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def command(archive_url: str, port: int = 8501) -> list[str]:
    """The streamlit command line that serves the app for `archive_url` on localhost:`port`."""
    return [
        sys.executable, "-m", "streamlit", "run", str(MAIN),
        "--server.headless", "true", "--server.port", str(int(port)),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--", "--archive", str(archive_url),
    ]


def serve(archive_url: str, port: int = 8501, open_browser: bool = False, block: bool = True,
          *, address: str | None = None) -> subprocess.Popen | int:
    """Serve the app. block=False: return the running Popen (the caller stops it).
    block=True: wait until it exits (Ctrl-C stops it cleanly) and return its exit code."""
    cmd = command(archive_url, port)
    if address:
        cmd[cmd.index("--server.port"):cmd.index("--server.port")] = ["--server.address", address]
    env = {**os.environ, "FLIGHTLOG_ARCHIVE": str(archive_url), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://{address or 'localhost'}:{port}"
    if open_browser:
        webbrowser.open(url)
    if not block:
        return proc
    print(f"flightlog ui: serving {archive_url} at {url} (Ctrl-C stops it)", file=sys.stderr)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 0
