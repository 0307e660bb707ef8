"""`flightlog ui [ARCHIVE_URL]`: serve the journey app over a folder or a URL."""

from __future__ import annotations

import argparse

from app.cli.archive import open_for_command
from app.cli.common import EXIT_OK, archive_url
from app.ui.server import serve
from telemetry.store.errors import ArchiveError


def cmd_ui(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise ArchiveError(f"--port must be a TCP port between 1 and 65535, got {args.port}")
    url = archive_url(args.archive_url)
    open_for_command(url).close()  # a missing archive is a clear error here, not a blank page
    result = serve(url, port=args.port, address=args.address)
    return int(result) if isinstance(result, int) else EXIT_OK
