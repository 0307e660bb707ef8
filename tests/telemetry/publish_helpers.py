"""Helpers shared by the publishing tests: the app's fixture archive (every table, written by the
real Writer) and a static web host on loopback that, like a real one, lists no folders."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLES_OF_DEMO = ("runs", "attempts", "ranks", "metrics", "system", "events", "checkpoints", "data_chunks", "evals",
                  "memorization")


def build_fixture_archive(root: str | Path) -> str:
    """tests/app/conftest.py's archive: runs llm-demo (2 ranks, 2 attempts, every table), baseline, empty-run."""
    spec = importlib.util.spec_from_file_location("flightlog_app_fixture", REPO / "tests" / "app" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_fixture_archive(root)


class NoListingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files only: a folder URL is 403, as on a static host (S3 website, GitHub Pages, ...)."""

    def list_directory(self, path):  # noqa: ANN001 - http.server's signature
        self.send_error(403, "directory listing is disabled")
        return None

    def log_message(self, *args) -> None:  # quiet test output
        pass


@contextlib.contextmanager
def static_host(folder: str | Path) -> Iterator[str]:
    """Serve `folder` on a free loopback port in a thread; yields the base URL (no trailing slash)."""
    handler = functools.partial(NoListingHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-host", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
