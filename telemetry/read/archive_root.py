"""An archive's root file, `flightlog.json`: whether there is an archive at the URL at all, and whether
this flightlog reads its format version."""

from __future__ import annotations

import json
from typing import Any

import fsspec

from data_schema import FORMAT_VERSION, TABLES
from data_schema.layout import MANIFEST_FILE, ROOT_FILE, join
from telemetry.read.footers import as_version, one_line
from telemetry.store.errors import ArchiveError, ArchiveNotFoundError, FormatVersionError


def read_json(fs: fsspec.AbstractFileSystem, root: str, rel: str, url: str) -> Any | None:
    """A JSON file of the archive; None when it has none; ArchiveError when it does not read."""
    try:
        with fs.open(join(root, rel), "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if "404" in str(exc) or "Not Found" in str(exc):
            return None
        raise ArchiveError(f"cannot read {rel} of archive {url!r}: {exc}") from None


def check_root(fs: fsspec.AbstractFileSystem, root: str, url: str, listable: bool) -> tuple[dict | None, list[str]]:
    """(the archive's flightlog.json or None for an archive without one, what is wrong with it);
    ArchiveNotFoundError when there is no archive, FormatVersionError when its format is newer.

    An unreadable flightlog.json is a problem of the archive, not a reason to refuse its
    segments: each file carries its own format version (checked per file by the catalog).
    """
    problems: list[str] = []
    try:
        root_info = read_json(fs, root, ROOT_FILE, url)
    except ArchiveError as exc:
        root_info = {}
        problems = [f"{ROOT_FILE}: {one_line(exc)}; rewrite it as "
                    f'{{"format_version": {FORMAT_VERSION}}} (readers go on without it)']
    if root_info is None and not _has_any_table(fs, root, url, listable):
        raise ArchiveNotFoundError(
            f"no flightlog archive at {url}: found neither {ROOT_FILE} nor table folders. "
            "Pass the archive's URL (--archive URL or $FLIGHTLOG_ARCHIVE), or record a run first "
            "(`flightlog demo` writes one)"
        )
    if root_info is not None and not isinstance(root_info, dict):
        problems = [f"{ROOT_FILE}: holds {type(root_info).__name__}, not a JSON object (readers go on without it)"]
    if isinstance(root_info, dict):
        version = as_version(root_info.get("format_version", FORMAT_VERSION))
        if version is None:
            problems = [f"{ROOT_FILE}: format_version {root_info.get('format_version')!r} is not "
                        f"a whole number (readers go on as if it were {FORMAT_VERSION})"]
        elif version > FORMAT_VERSION:
            raise FormatVersionError(
                f"archive {url} has format version {version}, newer than this flightlog reads "
                f"({FORMAT_VERSION}): upgrade flightlog (pip install -U flightlog)"
            )
    return (root_info if isinstance(root_info, dict) else None), problems


def _has_any_table(fs: fsspec.AbstractFileSystem, root: str, url: str, listable: bool) -> bool:
    if not listable:
        return read_json(fs, root, MANIFEST_FILE, url) is not None
    try:
        return any(fs.isdir(join(root, t)) for t in TABLES) or fs.exists(join(root, MANIFEST_FILE))
    except OSError:
        return False
