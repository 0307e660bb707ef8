"""The archive a reading command opens: the given URL or the default, refused early when it is a file."""

from __future__ import annotations

from app.cli.common import archive_url, not_a_file
from telemetry.maintain.wired import Archive, open_archive


def open_for_command(given: str | None) -> Archive:
    """Open the archive of `--archive` (or $FLIGHTLOG_ARCHIVE, ./flightlog-archive), recovering staged data."""
    return open_archive(not_a_file(archive_url(given)))
