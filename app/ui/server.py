"""Start the journey app: `python -m app.ui.launch run app/ui/main.py -- --archive URL` in a child process
(Streamlit's own command line, with the first visit's imports and archive opening done while it starts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

MAIN = Path(__file__).with_name("main.py")


def command(archive_url: str, port: int = 8501) -> list[str]:
    """The streamlit command line that serves the app for `archive_url` on localhost:`port`."""
    return [
        sys.executable, "-m", "app.ui.launch", "run", str(MAIN),
        "--server.headless", "true", "--server.port", str(int(port)),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
        "--", "--archive", str(archive_url),
    ]


def serve(archive_url: str, port: int = 8501, open_browser: bool = False, block: bool = True,
          *, address: str | None = "127.0.0.1") -> subprocess.Popen | int:
    """Serve the app. block=False: return the running Popen (the caller stops it).
    block=True: wait until it exits (Ctrl-C stops it cleanly) and return its exit code.

    `address` defaults to loopback: the sidebar lets a visitor open other archive paths and URLs
    from the server, so reaching it from other hosts is a choice (address="0.0.0.0"), e.g. behind
    an SSH tunnel or a proxy with authentication.
    """
    cmd = command(archive_url, port)
    if address:
        cmd[cmd.index("--server.port"):cmd.index("--server.port")] = ["--server.address", address]
    env = {**os.environ, "FLIGHTLOG_ARCHIVE": str(archive_url), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://{'localhost' if address in (None, '127.0.0.1', '0.0.0.0') else address}:{port}"
    if open_browser:
        webbrowser.open(url)
    if not block:
        return proc
    print(f"flightlog ui: serving {archive_url} at {url} (Ctrl-C stops it)", file=sys.stderr)
    previous = _stop_on_sigterm()
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        return 0
    finally:
        stop(proc)  # whatever ends the wait, never leave the streamlit child behind
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with block=False: terminate, then kill after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_on_sigterm() -> Any:
    """SIGTERM (a service manager, `kill`) ends the wait like Ctrl-C; returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)
