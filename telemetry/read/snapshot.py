"""A snapshot of an archive's live files: what one scan of the catalog found (telemetry.read.catalog).

A scan covers the whole archive or, for a query about some runs, only those runs (`scope`): a reader
asked for one run's curve lists and reads that run's files alone, whatever the size of the archive.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from data_schema import TABLES
from telemetry.read.footers import LiveFile


@dataclass(slots=True)
class Snapshot:
    """The live files of an archive at one moment, plus what discovery had to say."""

    files: dict[str, list[LiveFile]]
    staged: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # files readers leave out, {relative path: what is wrong}; each also has a "skipped ..." line in problems
    skipped: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, dict] | None = None
    from_manifest: bool = False
    version: str = ""
    replaced: list[str] = field(default_factory=list)  # parts swapped out by compaction (not read)
    lod: dict[str, Any] = field(default_factory=dict)  # run_id -> telemetry.read.lod.LodInfo in use
    scope: frozenset[str] | None = None  # the runs scanned; None: the whole archive
    _run_versions: dict[str, str] = field(default_factory=dict)

    def all_files(self) -> list[LiveFile]:
        return [f for table in TABLES for f in self.files.get(table, [])]

    def local_paths(self) -> list[tuple[str, str]]:
        """(relative path, local path DuckDB reads) of every data file and level-of-detail table in use."""
        return [(f.rel, f.local) for f in self.all_files()] + [(i.rel, i.local) for i in self.lod.values() if i.local]

    def run_version(self, run_id: str) -> str:
        """Hash of one run's live files (a cache key that changes only when that run's files do)."""
        got = self._run_versions.get(run_id)
        if got is None:
            digest = hashlib.sha256(run_id.encode())
            for f in self.all_files():
                if f.key.run_id == run_id:
                    digest.update(f"{f.rel}\0{f.size}\0{f.rows}\n".encode())
            lod = self.lod.get(run_id)
            digest.update(f"lod\0{getattr(lod, 'rel', None)}".encode())
            got = self._run_versions[run_id] = digest.hexdigest()[:16]
        return got

    def covers(self, run_id: str) -> bool:
        """Whether this snapshot scanned the run (a whole-archive scan covers every run)."""
        return self.scope is None or run_id in self.scope
