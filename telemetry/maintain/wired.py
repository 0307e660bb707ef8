"""The public `Writer` and `Archive`: the write and read paths with maintenance handed in.

`telemetry.write` and `telemetry.read` never import `telemetry.maintain` (the dependency rule in
docs/ARCHITECTURE.md); what they need of it arrives as a callable: the writer of rank 0 compacts
its run on close, and a reader recovers a crashed writer's staged data before its first scan.
These two classes are where that is wired, so `telemetry.Writer(...)` and `telemetry.Archive(...)`
behave as users expect without either path knowing about the other.
"""

from __future__ import annotations

import threading
from typing import Any

from telemetry.maintain.compaction import compact_closed_run
from telemetry.maintain.live_compactor import run_in_writer
from telemetry.maintain.recovery import recover as recover_archive
from telemetry.read import archive as read_archive
from telemetry.read import live as read_live
from telemetry.store.errors import ArchiveError
from telemetry.write import writer as write_writer


def _compact_on_close(fs, root: str, run_id: str, min_rows: int) -> None:
    compact_closed_run(fs, root, run_id, min_rows=min_rows)


def _compact_while_live(fs, root: str, run_id: str, stop: threading.Event, interval_s: float) -> None:
    run_in_writer(fs, root, run_id, stop, interval_s=interval_s)


class Writer(write_writer.Writer):
    """`telemetry.write.writer.Writer` whose rank 0 compacts the run while it is live
    (WriterConfig.live_compaction) and on close (WriterConfig.compact_on_close)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("compact_run", _compact_on_close)
        kwargs.setdefault("live_compactor", _compact_while_live)
        super().__init__(*args, **kwargs)


class Archive(read_archive.Archive):
    """`telemetry.read.archive.Archive` that first recovers crashed writers' staged data (recover=False: don't)."""

    def __init__(self, url: str | None = None, *, recover: bool = True, **kwargs: Any) -> None:
        super().__init__(url, recover=recover_archive if recover else None, **kwargs)


class LiveArchive(read_live.LiveArchive):
    """`telemetry.read.live.LiveArchive` with recovery on open, as `Archive`."""

    def __init__(self, url: str | None = None, *, recover: bool = True, **kwargs: Any) -> None:
        super().__init__(url, recover=recover_archive if recover else None, **kwargs)


def _opened(cls: type[Archive] | type[LiveArchive], url: str | None, **kwargs: Any) -> Any:
    """cls(url) with ArchiveError for anything that is the user's input (used by the CLI and the app)."""
    try:
        return cls(url, **kwargs)
    except ArchiveError:
        raise
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"cannot open archive {url}: {exc}") from None


def open_archive(url: str | None = None, **kwargs: Any) -> Archive:
    """Archive(url), a user's mistake as ArchiveError."""
    return _opened(Archive, url, **kwargs)


def open_live_archive(url: str | None = None, **kwargs: Any) -> LiveArchive:
    """LiveArchive(url), a user's mistake as ArchiveError."""
    return _opened(LiveArchive, url, **kwargs)
