"""Moving broken files (those `verify` found, telemetry.maintain.file_integrity) out of the archive's
live layout, into `_quarantine/` (kept, never deleted). The checking is verify's: `check_and_set_aside`
asks it, then moves what it found broken.

Readers already skip a broken file at every open; quarantine is the explicit, opt-in step
(`flightlog index --quarantine`) that stops every reader, engine and copy from meeting it again:
engines skip "_" paths, and the file keeps its relative path under `_quarantine/` so a person can
inspect it or move it back. Files of a newer format version are not broken and never moved.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from data_schema.layout import QUARANTINE_DIR, join
from telemetry.maintain.file_integrity import NEWER_FORMAT, VerifyReport, verify
from telemetry.store.fs import is_local, open_fs


@dataclass(slots=True)
class QuarantineReport:
    moved: dict[str, str] = field(default_factory=dict)  # relative path -> where it went
    failed: dict[str, str] = field(default_factory=dict)  # relative path -> why it could not move


def quarantine_path(rel: str, taken: set[str] | None = None, exists=None) -> str:
    """`_quarantine/<rel>`, or `<rel>.<n>` under it when an earlier file of that name is there."""
    base = f"{QUARANTINE_DIR}/{rel}"
    target, n = base, 1
    while (taken is not None and target in taken) or (exists is not None and exists(target)):
        target, n = f"{base}.{n}", n + 1
    return target


def quarantine(url: str, rels: Iterable[str], *, storage_options: dict | None = None) -> QuarantineReport:
    """Move each file (paths relative to the archive root) under `_quarantine/`; never raises per file."""
    fs, root = open_fs(url, storage_options)
    report = QuarantineReport()
    for rel in sorted(set(rels)):
        if rel.startswith("_") or ".." in rel.split("/"):
            report.failed[rel] = "not a file of the archive's live layout"
            continue
        target = quarantine_path(rel, exists=lambda t: fs.exists(join(root, t)))
        src, dst = join(root, rel), join(root, target)
        try:
            if is_local(fs):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)  # same filesystem: atomic, a reader sees the file or nothing
            else:
                fs.mv(src, dst)
        except (OSError, ValueError) as exc:
            report.failed[rel] = " ".join(str(exc).split())
            continue
        report.moved[rel] = target
    return report


def check_and_set_aside(url: str, *, move: bool, storage_options: dict | None = None,
                        progress: Callable[[int, int], None] | None = None) -> tuple[VerifyReport, QuarantineReport]:
    """What `flightlog index` does about bad files: find them (decoding every page when `move`,
    footers only otherwise) and, when `move`, quarantine the broken ones."""
    report = verify(url, storage_options=storage_options, deep=move, progress=progress)
    moved = quarantine(url, report.broken_files, storage_options=storage_options) if move else QuarantineReport()
    return report, moved


def bad_file_lines(report: VerifyReport, moved: QuarantineReport) -> list[str]:
    """One line per bad file: the path, what is wrong, and what happened to it."""
    lines = []
    for rel, why in sorted(report.bad_files.items()):
        if rel in moved.moved:
            tail = f"moved to {moved.moved[rel]}"
        elif rel in moved.failed:
            tail = f"could not move it to {QUARANTINE_DIR}/ ({moved.failed[rel]}); readers skip it"
        elif why.startswith(NEWER_FORMAT):
            tail = "kept; this flightlog's readers skip it"
        else:
            tail = "skipped by readers (`flightlog index --quarantine` moves it aside)"
        lines.append(f"{rel}: {why}; {tail}")
    return lines


__all__ = ["QuarantineReport", "bad_file_lines", "check_and_set_aside", "quarantine", "quarantine_path"]
