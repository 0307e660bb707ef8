"""Where the catalog learns what a live file's footer says, cheapest first: the run's index
(telemetry.store.run_index) or, where the store cannot list, the manifest's entry, while the listed size
(and local mtime) match; only then the footer itself (local: `pq.read_metadata`; remote: one batch of
ranged reads of the files' tails, telemetry.read.remote_cache.remote_footers).

A reader of a local, writable archive that had to read many footers of a run writes them back into the
run's index: the index is a cache (see telemetry.store.run_index), so the next reader opens the run
without opening its files, even when no compactor indexed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

import pyarrow.parquet as pq

from data_schema.layout import join
from telemetry.read.footers import one_line, parquet_error
from telemetry.read.remote_cache import remote_footers
from telemetry.store.fs import is_local
from telemetry.store.run_index import entry_matches, file_facts, index_path, make_entry, parse_index, write_run_index

log = logging.getLogger(__name__)

Stamp = tuple[int | None, int | None]  # (listed size, mtime_ns on a local disk, else None)
# A reader writes a run's index back once it had to read this many new footers of it (a live run's
# refresh reads a few: rewriting the index each time would cost more than it saves).
INDEX_WRITE_MIN = 32


class FactSource:
    """Footer facts of an archive's files for its catalog (see the module docstring)."""

    def __init__(self, fs: Any, root: str, url: str, local_path: Callable[[str], str], *, write_index: bool):
        self.fs, self.root, self.url = fs, root, url
        self.local = is_local(fs)
        self.local_path = local_path
        self.write_index = write_index
        self.indexes: dict[str, tuple[Stamp, dict[str, dict]]] = {}  # run_id -> (index file stamp, entries)
        self.footers_read = 0
        self.indexes_read = 0

    def resolve(self, items: list[tuple[str, str, Stamp]], manifest: dict[str, dict] | None,
                index_stamps: dict[str, Stamp], *, keep: Collection[str]) -> dict[str, dict | str]:
        """{rel: footer facts, or why the file is left out} of the (rel, run_id, stamp) files.
        `manifest`: the entries of a store that cannot list; `index_stamps`: {run_id: stamp} of the
        index files listed; `keep`: the live files (entries of others are dropped on write-back)."""
        if not items:
            return {}
        known = self._known(manifest, index_stamps, {run for _, run, _ in items})
        out: dict[str, dict | str] = {}
        todo: list[tuple[str, str, Stamp]] = []
        for rel, run, stamp in items:
            entry = known.get(rel)
            if entry is not None and (manifest is not None or entry_matches(entry, stamp[0], stamp[1])):
                out[rel] = entry
            else:
                todo.append((rel, run, stamp))
        if todo:
            out.update(self._read(todo))
            if self.write_index:
                self._write_back(todo, out, keep)
        return out

    def _known(self, manifest: dict[str, dict] | None, index_stamps: dict[str, Stamp], runs: set[str]
               ) -> dict[str, dict]:
        known: dict[str, dict] = {}
        if manifest:
            known.update({rel: e for rel, e in manifest.items() if "columns" in e or "lod" in e})
        stale = [r for r in sorted(runs) if r in index_stamps and self.indexes.get(r, (None,))[0] != index_stamps[r]]
        if stale:
            paths = [join(self.root, index_path(r)) for r in stale]
            try:  # one batch: async stores fetch the indexes concurrently
                blobs = self.fs.cat(paths, on_error="return") if len(paths) > 1 else {
                    paths[0]: self.fs.cat_file(paths[0])}
            except (OSError, ValueError) as exc:
                log.debug("cannot read run indexes of %s: %s", self.url, one_line(exc))
                blobs = {}
            self.indexes_read += len(stale)
            for run, path in zip(stale, paths, strict=True):
                blob = blobs.get(path)
                entries = parse_index(blob) if isinstance(blob, (bytes, str)) else None
                self.indexes[run] = (index_stamps[run], entries or {})
        for run in runs:
            if run in index_stamps and run in self.indexes:
                known.update(self.indexes[run][1])
        return known

    def _read(self, todo: list[tuple[str, str, Stamp]]) -> dict[str, dict | str]:
        self.footers_read += len(todo)
        if not self.local:
            return dict(remote_footers(self.fs, self.root, self.url, [(rel, stamp[0]) for rel, _, stamp in todo]))
        out: dict[str, dict | str] = {}
        for rel, _, _ in todo:
            try:
                out[rel] = file_facts(rel, pq.read_metadata(self.local_path(rel)))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
                out[rel] = f"not a readable Parquet file ({parquet_error(exc)})"
        return out

    def _write_back(self, read: list[tuple[str, str, Stamp]], facts: dict[str, dict | str],
                    keep: Collection[str]) -> None:
        """Keep what this scan had to read in the runs' indexes, so the next reader need not."""
        new_by_run: dict[str, dict[str, dict]] = {}
        for rel, run, (size, mtime_ns) in read:
            got = facts.get(rel)
            if isinstance(got, dict) and size is not None:
                new_by_run.setdefault(run, {})[rel] = make_entry(got, size, mtime_ns)
        for run, new in new_by_run.items():
            if len(new) < INDEX_WRITE_MIN:
                continue
            old = self.indexes.get(run, (None, {}))[1]
            entries = {rel: e for rel, e in old.items() if rel in keep} | new
            try:
                write_run_index(self.fs, self.root, run, entries)
            except OSError as exc:  # a cache that cannot be written costs the next reader footer reads
                log.debug("cannot write the index of run %s: %s", run, one_line(exc))
                continue
            # what this reader knows now; the index file's new stamp makes the next scan read it once
            self.indexes[run] = ((None, None), entries)
